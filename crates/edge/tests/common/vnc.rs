//! Remote desktops (VNC) in real Chromium with the real binaries: TigerVNC's
//! `Xvnc` as a machine's VNC server on the "machine LAN" (loopback
//! 127.0.0.5), painted with `xsetroot`, with `xev` on its root window telling
//! which keys reached the X server; a site whose device marks its desktops as
//! `vnc` services; and the browser steps the desktop tests share (portal
//! login, the new tab, the viewer's status, the colour at the centre of the
//! desktop as Chromium's screenshot shows it).

use super::*;
use drawbridge_testnet::browser::{Driver, chrome_caps, have_browser, spki_hash};
use fantoccini::{Client, ClientBuilder, Locator};
use std::io::{BufRead, Read};
use std::net::{Ipv4Addr, SocketAddrV4};

/// The desktops' VNC password (VNC Authentication uses 8 characters at most).
pub const VNC_PASSWORD: &str = "drawbr1d";
/// Where the machine's desktops listen.
pub const LAN_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);
/// Colours painted on the desktop: `xsetroot`'s name, and the pixel.
pub const MAGENTA: (&str, [u8; 3]) = ("#ff00ff", [255, 0, 255]);
pub const GREEN: (&str, [u8; 3]) = ("#00ff00", [0, 255, 0]);
pub const BLUE: (&str, [u8; 3]) = ("#0000ff", [0, 0, 255]);
/// The X tools (Debian: tigervnc-standalone-server, tigervnc-tools,
/// x11-xserver-utils, x11-utils), and `lz4` (Debian: lz4), which opens a
/// downloaded recording as an auditor would.
const X_TOOLS: [&str; 5] = ["Xvnc", "vncpasswd", "xsetroot", "xev", "lz4"];

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

/// True when TigerVNC and the X tools (and Chromium, if `browser`) are
/// installed; otherwise a visible SKIPPED line, or a panic under
/// `DRAWBRIDGE_REQUIRE_BROWSER=1` (scripts/test sets it once it has
/// installed all of them).
pub fn have_desktop_tools(test: &str, browser: bool) -> bool {
    if browser && !have_browser(test) {
        return false;
    }
    let missing: Vec<&str> = X_TOOLS.into_iter().filter(|p| !on_path(p)).collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var("DRAWBRIDGE_REQUIRE_BROWSER").as_deref() == Ok("1") {
        panic!("DRAWBRIDGE_REQUIRE_BROWSER=1 but {missing:?} missing");
    }
    eprintln!(
        "SKIPPED {test}: no {missing:?} (install tigervnc-standalone-server tigervnc-tools x11-xserver-utils x11-utils lz4)"
    );
    false
}

/// A downloaded recording opened with the `lz4` tool (`lz4 -d`, stdin to
/// stdout), as an auditor opens it: the framed stream.
pub fn lz4_decompress(file: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("lz4")
        .args(["-d", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lz4");
    let mut stdin = child.stdin.take().expect("lz4's stdin");
    let input = file.to_vec();
    let feeder = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output().expect("lz4 ran");
    feeder
        .join()
        .expect("feeding lz4")
        .expect("lz4 took the file");
    assert!(
        out.status.success(),
        "lz4 -d: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// A running `Xvnc` (VNC Authentication with [`VNC_PASSWORD`], 640x480),
/// killed (this PID only) when dropped.
pub struct Xvnc {
    child: Child,
    /// The X display number (`:N`), picked by the X server itself.
    pub display: u32,
    pub addr: SocketAddrV4,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Xvnc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `vncpasswd -f`: the password on stdin, the obfuscated file on stdout.
fn write_password_file(path: &Path, password: &str) {
    use std::io::Write;
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

impl Xvnc {
    /// Starts Xvnc on [`LAN_IP`] and a free port; retries when someone else
    /// took the port first.
    pub fn start() -> Xvnc {
        for attempt in 1..=5 {
            let dir = tempfile::tempdir().unwrap();
            let passwd = dir.path().join("passwd");
            write_password_file(&passwd, VNC_PASSWORD);
            let port = std::net::TcpListener::bind((LAN_IP, 0))
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let log = dir.path().join("xvnc.log");
            let mut child = Command::new("Xvnc")
                // -displayfd: the X server picks a free display and writes its number.
                .args(["-displayfd", "1", "-nolisten", "tcp"])
                .args(["-rfbport", &port.to_string(), "-interface"])
                .arg(LAN_IP.to_string())
                .args(["-geometry", "640x480", "-depth", "24", "-AlwaysShared"])
                .args(["-BlacklistThreshold", "1000"])
                .args(["-SecurityTypes", "VncAuth", "-PasswordFile"])
                .arg(&passwd)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .expect("start Xvnc");
            let stdout = child.stdout.take().unwrap();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let mut r = std::io::BufReader::new(stdout);
                let mut line = String::new();
                let _ = r.read_line(&mut line);
                let _ = tx.send(line);
                // Keep the pipe open (and drained) while Xvnc runs.
                let _ = std::io::copy(&mut r, &mut std::io::sink());
            });
            let display = rx
                .recv_timeout(Duration::from_secs(20))
                .ok()
                .and_then(|l| l.trim().parse().ok());
            let mut x = Xvnc {
                child,
                display: display.unwrap_or(0),
                addr: SocketAddrV4::new(LAN_IP, port),
                log,
                _dir: dir,
            };
            if display.is_some() && x.wait_listening() {
                return x;
            }
            eprintln!("Xvnc attempt {attempt} failed:\n{}", x.log_text());
        }
        panic!("Xvnc did not start in 5 attempts (logs above)");
    }

    /// True once the RFB port greets; false if Xvnc exited first.
    fn wait_listening(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            if self.greets() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    /// Whether the VNC server answers a direct connection with its RFB greeting.
    pub fn greets(&self) -> bool {
        let Ok(mut probe) = std::net::TcpStream::connect(self.addr) else {
            return false;
        };
        let _ = probe.set_read_timeout(Some(Duration::from_secs(2)));
        let mut greeting = [0u8; 12];
        probe.read_exact(&mut greeting).is_ok() && greeting.starts_with(b"RFB ")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn display_arg(&self) -> String {
        format!(":{}", self.display)
    }

    /// Paints the whole desktop (the root window) one colour.
    pub fn paint(&self, colour: (&str, [u8; 3])) {
        let out = Command::new("xsetroot")
            .args(["-display", &self.display_arg(), "-solid", colour.0])
            .output()
            .expect("run xsetroot");
        assert!(
            out.status.success(),
            "xsetroot: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts recording the keys the X server gets: `xev` on the root window
    /// (no window manager, no other window: the keyboard goes there).
    pub fn watch_keys(&self) -> KeyWatch {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("xev.out");
        let child = Command::new("xev")
            .args([
                "-display",
                &self.display_arg(),
                "-root",
                "-event",
                "keyboard",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start xev");
        // xev prints nothing until an event: give it a moment to select the
        // root window's key events before anyone types.
        std::thread::sleep(Duration::from_millis(500));
        KeyWatch {
            child,
            out,
            _dir: dir,
        }
    }
}

/// `xev` on a desktop's root window, killed (this PID only) when dropped.
pub struct KeyWatch {
    child: Child,
    out: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for KeyWatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl KeyWatch {
    /// The keysym names of the key presses the X server delivered so far.
    pub fn pressed(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let mut keys = Vec::new();
        let mut in_press = false;
        for line in text.lines() {
            if line.starts_with("KeyPress event") {
                in_press = true;
            } else if line.starts_with("KeyRelease event") {
                in_press = false;
            } else if in_press && let Some((_, rest)) = line.split_once("(keysym 0x") {
                // "(keysym 0x71, q), same_screen YES,"
                if let Some(name) = rest
                    .split_once(", ")
                    .and_then(|(_, n)| n.split_once(')'))
                    .map(|(n, _)| n)
                {
                    keys.push(name.to_string());
                }
                in_press = false;
            }
        }
        keys
    }

    /// Waits (10 s at most) until the X server got these key presses, in order.
    pub fn wait_for(&self, keys: &[&str]) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.pressed();
            if got.windows(keys.len()).any(|w| w == keys) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the X server never got the keys {keys:?}; it got {got:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A server, an enrolled edge online with its switch on, and desktops on its
/// machine LAN, each released by the device firewall and marked `vnc`.
pub struct Site {
    pub agent: Proc,
    pub desktops: Vec<Xvnc>,
    pub api: Api,
    pub device: String,
    pub server: Server,
    pub dir: tempfile::TempDir,
}

fn tcp_target(a: SocketAddrV4) -> Value {
    json!({"address": a.ip().to_string(), "protocol": "tcp", "ports": a.port().to_string()})
}

impl Site {
    pub fn start(desktops: usize) -> Site {
        let dir = tempfile::tempdir().unwrap();
        let (server, api, device, state) = setup(dir.path());
        let desktops: Vec<Xvnc> = (0..desktops).map(|_| Xvnc::start()).collect();
        for x in &desktops {
            x.paint(MAGENTA);
        }
        let firewall: Vec<Value> = desktops.iter().map(|x| tcp_target(x.addr)).collect();
        let web: Vec<Value> = desktops
            .iter()
            .map(|x| json!({"target": x.addr.to_string(), "scheme": "vnc"}))
            .collect();
        let (code, v) = api.call(
            reqwest::Method::PATCH,
            &format!("/devices/{device}"),
            Some(json!({"firewall": firewall, "web_services": web})),
        );
        assert_eq!(code, 200, "{v}");
        edge(&state, &["switch", "on"]);
        let agent = edge_run(&state);
        wait("online with the switch on", || {
            let d = api.get(&format!("/devices/{device}"));
            d["status"]["online"] == true && d["status"]["switch_on"] == true
        });
        Site {
            agent,
            desktops,
            api,
            device,
            server,
            dir,
        }
    }

    /// The first desktop.
    pub fn xvnc(&self) -> &Xvnc {
        &self.desktops[0]
    }

    /// A user (role `user`) whose group has a grant of `level` on the device's pool.
    pub fn user(&self, name: &str, level: &str) -> String {
        let ok = |code: u16, v: &Value| assert!(code == 200 || code == 204, "{code} {v}");
        let (code, v) = self.api.post(
            "/users",
            json!({"username": name, "role": "user", "password": PASSWORD}),
        );
        ok(code, &v);
        let id = v["id"].as_str().unwrap().to_string();
        let (_, g) = self
            .api
            .post("/groups", json!({"name": format!("g-{name}")}));
        let (_, p) = self
            .api
            .post("/pools", json!({"name": format!("p-{name}")}));
        let (g, p) = (g["id"].as_str().unwrap(), p["id"].as_str().unwrap());
        for path in [
            format!("/groups/{g}/members/{id}"),
            format!("/pools/{p}/devices/{}", self.device),
        ] {
            let (code, v) = self.api.call(reqwest::Method::PUT, &path, None);
            ok(code, &v);
        }
        let (code, v) = self.api.post(
            "/grants",
            json!({"group_id": g, "pool_id": p, "level": level, "targets": []}),
        );
        ok(code, &v);
        id
    }

    /// The admin's own user id.
    pub fn admin_id(&self) -> String {
        self.api.get("/me")["user"]["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Creates a session of `users` releasing `desktops`, as the admin;
    /// answers the API's status and body.
    pub fn try_session(&self, users: &[&str], desktops: &[SocketAddrV4]) -> (u16, Value) {
        let targets: Vec<Value> = desktops.iter().map(|a| tcp_target(*a)).collect();
        self.api.post(
            "/sessions",
            json!({"name": "desktop", "devices": [{"device_id": self.device, "targets": targets}], "users": users}),
        )
    }

    /// A session of `users` releasing `desktops`, started by `starter` (one
    /// of them: only an assigned user starts a session).
    pub fn session(&self, users: &[&str], desktops: &[SocketAddrV4], starter: &Api) -> String {
        let (code, v) = self.try_session(users, desktops);
        assert_eq!(code, 200, "{v}");
        let sid = v["id"].as_str().unwrap().to_string();
        let (code, v) = starter.post(&format!("/sessions/{sid}/start"), json!({}));
        assert_eq!(code, 200, "{v}");
        sid
    }

    pub fn end(&self, sid: &str) {
        let (code, v) = self.api.post(&format!("/sessions/{sid}/end"), json!({}));
        assert_eq!(code, 200, "{v}");
    }

    /// Stores the VNC password of a desktop (the server then answers VNC Authentication).
    pub fn store_password(&self, target: SocketAddrV4) {
        let (code, v) = self.api.call(
            reqwest::Method::PUT,
            &format!("/devices/{}/desktop-passwords", self.device),
            Some(json!({"target": target.to_string(), "password": VNC_PASSWORD})),
        );
        assert_eq!(code, 204, "{v}");
    }

    /// The API as `user` (of account acme).
    pub fn api_as(&self, user: &str) -> Api {
        let r = self
            .api
            .http
            .post(format!("{}/api/v1/auth/login", self.server.url()))
            .json(&json!({"account": "acme", "username": user, "password": PASSWORD}))
            .send()
            .unwrap();
        let v: Value = r.json().unwrap();
        Api {
            http: self.api.http.clone(),
            base: self.server.url(),
            token: v["token"]
                .as_str()
                .unwrap_or_else(|| panic!("login {user}: {v}"))
                .to_string(),
        }
    }

    /// The session's desktops as `GET /api/v1/desktops` lists them (newest first).
    pub fn desktops_of(&self, sid: &str) -> Vec<Value> {
        let v = self.api.get(&format!("/desktops?session_id={sid}"));
        v.as_array()
            .unwrap_or_else(|| panic!("GET /desktops: {v}"))
            .clone()
    }

    /// Waits for the one desktop of `sid` that matches `f`.
    pub fn wait_desktop(&self, sid: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
        let mut found = None;
        wait(what, || {
            found = self.desktops_of(sid).into_iter().find(|d| f(d));
            found.is_some()
        });
        found.unwrap()
    }
}

/// A headless Chromium of its own (own profile) trusting the site's server.
pub struct Browser {
    pub c: Client,
    _profile: tempfile::TempDir,
}

impl Browser {
    pub async fn start(driver: &Driver, server: &Server) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let caps = chrome_caps(
            profile.path(),
            &spki_hash(&server.data.join("server.pem")),
            None,
        );
        let c = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("WebDriver session");
        Browser {
            c,
            _profile: profile,
        }
    }
}

pub async fn find(c: &Client, css: &str) -> fantoccini::elements::Element {
    match c
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css(css))
        .await
    {
        Ok(e) => e,
        Err(e) => panic!(
            "no {css} on {}: {e}\n{}",
            c.current_url()
                .await
                .map(|u| u.to_string())
                .unwrap_or_default(),
            c.source().await.unwrap_or_default()
        ),
    }
}

/// Logs `user` in to the portal.
pub async fn portal_login(c: &Client, base: &str, user: &str) {
    c.goto(&format!("{base}/portal/login")).await.unwrap();
    for (name, value) in [
        ("account", "acme"),
        ("username", user),
        ("password", PASSWORD),
    ] {
        find(c, &format!("input[name={name}]"))
            .await
            .send_keys(value)
            .await
            .unwrap();
    }
    find(c, "#login").await.click().await.unwrap();
    find(c, "#logout").await;
}

/// Clicks a button that opens a new tab and switches to that tab.
pub async fn click_to_new_tab(c: &Client, css: &str) {
    let before = c.windows().await.unwrap();
    find(c, css).await.click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = c.windows().await.unwrap();
        if let Some(w) = now.into_iter().find(|w| !before.contains(w)) {
            c.switch_to_window(w).await.unwrap();
            return;
        }
        assert!(Instant::now() < deadline, "{css} opened no new tab");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// From the session page, "Open desktop" of `target`, in the new tab.
pub async fn open_desktop_from_portal(c: &Client, base: &str, sid: &str, target: SocketAddrV4) {
    c.goto(&format!("{base}/portal/sessions/{sid}"))
        .await
        .unwrap();
    click_to_new_tab(c, &format!("button.open-desktop[data-target=\"{target}\"]")).await;
}

/// The viewer's status line.
pub async fn status(c: &Client) -> String {
    c.execute(
        "const s = document.getElementById('status'); return s ? s.textContent : '';",
        vec![],
    )
    .await
    .map(|v| v.as_str().unwrap_or_default().to_string())
    .unwrap_or_default()
}

/// Waits `secs` at most until the viewer's status is `want`; answers how long it took.
pub async fn wait_status(c: &Client, want: &str, secs: u64) -> Duration {
    let start = Instant::now();
    loop {
        let s = status(c).await;
        if s == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(secs),
            "the viewer still says {s:?} after {secs} s, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `script` until it answers `true` (`secs` at most).
pub async fn wait_js(c: &Client, script: &str, what: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if c.execute(script, vec![]).await.ok() == Some(Value::Bool(true)) {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Chromium's screenshot of the desktop's canvas (PNG).
pub async fn canvas_png(c: &Client) -> Vec<u8> {
    find(c, "#screen canvas")
        .await
        .screenshot()
        .await
        .expect("screenshot of the desktop")
}

/// The pixel at the centre of a PNG (RGB).
pub fn centre_pixel(png_bytes: &[u8]) -> [u8; 3] {
    let mut decoder = png::Decoder::new(std::io::Cursor::new(png_bytes));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("a PNG");
    let mut buf = vec![0; reader.output_buffer_size().expect("PNG size")];
    let info = reader.next_frame(&mut buf).expect("PNG frame");
    assert!(info.width > 10 && info.height > 10, "{info:?}");
    let samples = info.color_type.samples();
    assert!(samples >= 3, "a colour screenshot: {info:?}");
    let at = (info.height as usize / 2) * info.line_size + (info.width as usize / 2) * samples;
    [buf[at], buf[at + 1], buf[at + 2]]
}

fn close_to(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 40)
}

/// Waits (`secs` at most) until the centre of the desktop on screen shows
/// `colour`; `who` names the viewer in the failure.
pub async fn wait_colour(c: &Client, colour: (&str, [u8; 3]), who: &str, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        // Until noVNC has the framebuffer's size its canvas has none, and
        // Chromium takes no screenshot of it: wait for it like for the colour.
        let got = match find(c, "#screen canvas").await.screenshot().await {
            Ok(png) => centre_pixel(&png),
            Err(_) => [0, 0, 0],
        };
        if close_to(got, colour.1) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who}: the desktop's centre shows {got:?}, not {} {:?}, after {secs} s (status {:?})",
            colour.0,
            colour.1,
            status(c).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Clicks into the desktop (noVNC takes the focus) and types `keys`.
pub async fn type_into_desktop(c: &Client, keys: &str) {
    let canvas = find(c, "#screen canvas").await;
    canvas.click().await.unwrap();
    canvas.send_keys(keys).await.unwrap();
}

/// Keeps a screenshot: always in this test target's temporary directory,
/// and in docs/screenshots with `DRAWBRIDGE_SCREENSHOTS=1`.
pub async fn keep_screenshot(c: &Client, name: &str) {
    let png = c.screenshot().await.unwrap();
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("desktop_browser");
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join(format!("{name}.png")), &png).unwrap();
    if std::env::var("DRAWBRIDGE_SCREENSHOTS").as_deref() == Ok("1") {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), &png).unwrap();
    }
}
