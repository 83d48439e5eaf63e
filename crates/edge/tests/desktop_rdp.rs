//! Remote desktops over RDP in real Chromium, with the real server and edge
//! binaries, Devolutions' IronRDP web client from npm, and a real RDP server:
//! Debian's xrdp on the machine's "LAN" (127.0.0.5) showing a TigerVNC Xvnc
//! (see `common::rdp`), released by the device firewall and marked `rdp`. A
//! user opens it from the portal, logs on in the viewer and sees it (the
//! colour `xsetroot` painted) and types into it (`xev` on the X server shows
//! the keys); the desktop is recorded (`DBRDP1`, its hash on the record) and
//! closes when its session ends, and replays to its last picture; a `monitor` grant gets it view-only (its keys
//! never arrive); and once the RDP server's certificate changed, it is refused
//! until an admin accepts the new one. With credentials an admin stored, the
//! viewer asks for none and the server signs in (xrdp set to log on to Xvnc
//! with the RDP password: the desktop shows with the right stored password
//! only, and the password is neither in the page nor in the recording).
//! Skips with a visible line without
//! Chromium, the X tools, xrdp or the IronRDP web client.

use crate::common;

use common::rdp::*;
use common::vnc::*;
use drawbridge_testnet::browser::Driver;
use serde_json::{Value, json};
use std::time::Duration;

/// One desktop test at a time (a server, an edge, Xvnc, xrdp and Chromium each).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

fn audit_has(site: &Site, action: &str, needle: &str) -> bool {
    site.api
        .get(&format!("/audit?action={action}"))
        .to_string()
        .contains(needle)
}

#[test]
fn an_rdp_desktop_is_seen_typed_into_recorded_and_closed_with_its_session() {
    let name = "an_rdp_desktop_is_seen_typed_into_recorded_and_closed_with_its_session";
    if !have_rdp_tools(name) {
        return;
    }
    let _one = one_at_a_time();
    let rs = RdpSite::start();
    let site = &rs.site;
    let target = rs.target();
    let anna = site.user("anna", "full");
    let sid = site.session(&[&anna], &[target], &site.api_as("anna"));
    let keys = site.xvnc().watch_keys();
    let base = site.server.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let driver = Driver::start();
    let b = rt.block_on(Browser::start(&driver, &site.server));
    let c = &b.c;
    rt.block_on(async {
        portal_login(c, &base, "anna").await;
        open_desktop_from_portal(c, &base, &sid, target).await;
        let url = c.current_url().await.unwrap();
        assert!(url.host_str().unwrap().ends_with(".web.localhost"), "{url}");
        rdp_log_on(c, "anna", "typed-password").await;
        rdp_connected(c, "Connected").await;
        rdp_wait_colour(c, MAGENTA, "anna", 30).await;
        keep_screenshot(c, "rdp-desktop-viewer").await;
        // Keys typed in Chromium reach the machine's X server through xrdp.
        rdp_type(c, "zq").await;
        keys.wait_for(&["z", "q"]);
        site.xvnc().paint(GREEN);
        rdp_wait_colour(c, GREEN, "anna", 15).await;
    });
    // The session's end closes the desktop within seconds.
    site.end(&sid);
    let closed = rt.block_on(rdp_status_starting(c, "Closed", 8));
    assert!(closed.contains("the session ended"), "{closed}");
    let d = site.wait_desktop(&sid, "the desktop ended", |d| d["live"] == false);
    assert_eq!(d["user_id"], anna.as_str(), "{d}");
    assert_eq!(d["end_reason"], "the session ended", "{d}");
    assert_eq!(d["view_only"], false, "{d}");
    let sha = d["sha256"]
        .as_str()
        .expect("a hash on the record")
        .to_string();
    assert!(
        audit_has(site, "desktop.end", &sha),
        "the hash is on the audit chain"
    );
    assert!(
        audit_has(site, "desktop.open", "\"rdp\""),
        "desktop.open says RDP"
    );
    // The recording: DBRDP1, the replay response first, then the stream; intact.
    let r = site
        .api
        .http
        .get(format!(
            "{base}/api/v1/desktops/{}/recording",
            d["id"].as_str().unwrap()
        ))
        .bearer_auth(&site.api.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-recording-intact"], "true");
    assert_eq!(r.headers()["x-recording-sha256"], sha.as_str());
    let file = r.bytes().unwrap();
    assert_eq!(
        hex::encode(ring::digest::digest(&ring::digest::SHA256, &file).as_ref()),
        sha,
        "the downloaded file hashes to the SHA-256 on the record"
    );
    let bytes = lz4_decompress(&file);
    assert!(
        bytes.starts_with(b"DBRDP1\n"),
        "{:?}",
        &bytes[..16.min(bytes.len())]
    );
    assert!(
        bytes.len() > 10_000,
        "the desktop's pictures are recorded: {} bytes",
        bytes.len()
    );
    // Replayed in the browser: the web client answered from the recording,
    // jumping to its end shows the last picture.
    let (code, v) = site.api.post(
        &format!("/desktops/{}/replay", d["id"].as_str().unwrap()),
        json!({}),
    );
    assert_eq!(code, 200, "{v}");
    let url = format!("{}#end", v["url"].as_str().unwrap());
    rt.block_on(async {
        c.goto(&url).await.unwrap();
        rdp_connected(c, "Replaying (hash verified)").await;
        rdp_wait_colour(c, GREEN, "the replay", 30).await;
        keep_screenshot(c, "rdp-desktop-replay").await;
        let _ = b.c.clone().close().await;
    });
}

#[test]
fn a_monitor_grant_gets_the_rdp_desktop_view_only_and_a_changed_certificate_is_refused() {
    let name =
        "a_monitor_grant_gets_the_rdp_desktop_view_only_and_a_changed_certificate_is_refused";
    if !have_rdp_tools(name) {
        return;
    }
    let _one = one_at_a_time();
    let mut rs = RdpSite::start();
    let target = rs.target();
    let (sid, mona) = {
        let site = &rs.site;
        let mona = site.user("mona", "monitor");
        let me = site.admin_id();
        let (code, v) = site.try_session(&[&mona, &me], &[target]);
        assert_eq!(code, 200, "{v}");
        let sid = v["id"].as_str().unwrap().to_string();
        let (code, v) = site.api.post(&format!("/sessions/{sid}/start"), json!({}));
        assert_eq!(code, 200, "{v}");
        (sid, mona)
    };
    let keys = rs.site.xvnc().watch_keys();
    let base = rs.site.server.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let driver = Driver::start();
    let b = rt.block_on(Browser::start(&driver, &rs.site.server));
    let c = &b.c;
    rt.block_on(async {
        portal_login(c, &base, "mona").await;
        open_desktop_from_portal(c, &base, &sid, target).await;
        rdp_log_on(c, "mona", "typed-password").await;
        rdp_connected(c, "Connected (view only)").await;
        rdp_wait_colour(c, MAGENTA, "mona", 30).await;
        // The web client sends the keys; the server drops them.
        rdp_type(c, "mv").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            keys.pressed().is_empty(),
            "a view-only user's keys reached the X server: {:?}",
            keys.pressed()
        );
        assert_eq!(status(c).await, "Connected (view only)");
    });
    let d = rs.site.wait_desktop(&sid, "mona's desktop is listed", |d| {
        d["user_id"] == mona.as_str()
    });
    assert_eq!(d["view_only"], true, "{d}");
    // The control: the admin's keys on the same desktop do arrive.
    let open = |site: &Site| {
        let (code, v) = site.api.post(
            &format!("/sessions/{sid}/web"),
            json!({"device_id": site.device, "target": target.to_string()}),
        );
        assert_eq!(code, 200, "{v}");
        v["url"].as_str().unwrap().to_string()
    };
    let url = open(&rs.site);
    rt.block_on(async {
        c.goto(&url).await.unwrap();
        rdp_log_on(c, "root", "typed-password").await;
        rdp_connected(c, "Connected").await;
        rdp_type(c, "k").await;
        keys.wait_for(&["k"]);
    });
    assert_eq!(keys.pressed(), ["k"], "only the admin's key arrived");

    // A new certificate on the RDP server: refused, audited, kept as pending.
    rs.change_certificate();
    let url = open(&rs.site);
    rt.block_on(async {
        c.goto(&url).await.unwrap();
        rdp_log_on(c, "root", "typed-password").await;
        let refused = rdp_status_starting(c, "Refused", 30).await;
        assert!(refused.contains("certificate"), "{refused}");
    });
    assert!(audit_has(
        &rs.site,
        "web.certificate_changed",
        &target.to_string()
    ));
    let pins: Value = rs
        .site
        .api
        .get(&format!("/devices/{}/web-pins", rs.site.device));
    assert!(
        pins.to_string().contains("pending_sha256\":\""),
        "the new certificate waits for an admin: {pins}"
    );
    rt.block_on(async {
        let _ = b.c.clone().close().await;
    });
}

#[test]
fn stored_rdp_credentials_sign_in_and_the_user_never_sees_them() {
    let name = "stored_rdp_credentials_sign_in_and_the_user_never_sees_them";
    if !have_rdp_tools(name) {
        return;
    }
    let _one = one_at_a_time();
    // xrdp passes the RDP password on as the VNC password: only the right
    // one shows Xvnc's picture.
    let rs = RdpSite::start_asking_password();
    let site = &rs.site;
    let target = rs.target();
    let anna = site.user("anna", "full");
    let sid = site.session(&[&anna], &[target], &site.api_as("anna"));
    rs.store_credentials("anna-rdp", VNC_PASSWORD);
    let keys = site.xvnc().watch_keys();
    let base = site.server.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let driver = Driver::start();
    let b = rt.block_on(Browser::start(&driver, &site.server));
    let c = &b.c;
    rt.block_on(async {
        portal_login(c, &base, "anna").await;
        open_desktop_from_portal(c, &base, &sid, target).await;
        // No form to fill: the page says the server signs in, and it does.
        rdp_connected(c, "Connected: signed in by the server").await;
        let form_hidden = c
            .execute("return document.getElementById('login').hidden;", vec![])
            .await
            .unwrap();
        assert_eq!(form_hidden, json!(true), "the viewer asked for credentials");
        rdp_wait_colour(c, MAGENTA, "anna, signed in by the server", 30).await;
        keep_screenshot(c, "rdp-desktop-stored-credentials").await;
        rdp_type(c, "s").await;
        keys.wait_for(&["s"]);
        let html = c
            .execute("return document.documentElement.outerHTML;", vec![])
            .await
            .unwrap();
        assert!(
            !html.to_string().contains(VNC_PASSWORD),
            "the page has the password"
        );
    });
    let d = site.wait_desktop(&sid, "the desktop is listed", |d| d["live"] == true);
    // xrdp was asked for TLS only and logged on to Xvnc with the stored password.
    let log = rs.xrdp_log();
    assert!(
        log.contains("selected [SSL]") && log.contains("VNC password ok"),
        "{log}"
    );
    assert!(!log.contains("VNC password failed"), "{log}");
    assert!(
        audit_has(site, "desktop.open", "\"password\":\"stored\""),
        "desktop.open says the credentials were stored"
    );

    // A wrong stored password: xrdp's logon to Xvnc fails, the picture never shows.
    rs.store_credentials("anna-rdp", "wrong-pw");
    rt.block_on(async {
        c.refresh().await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if let Ok(png) = find(c, SCREEN).await.screenshot().await {
                let got = centre_pixel(&png);
                assert!(
                    !got.iter().zip(MAGENTA.1).all(|(x, y)| x.abs_diff(y) <= 40),
                    "a wrong stored password showed the desktop (status {:?})",
                    status(c).await
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        eprintln!(
            "with a wrong stored password the viewer says {:?}",
            status(c).await
        );
    });
    let log = rs.xrdp_log();
    assert!(log.contains("VNC password failed"), "{log}");

    // The recording (what the browser was sent) does not hold the password.
    site.end(&sid);
    let d2 = site.wait_desktop(&sid, "the first desktop ended", |x| {
        x["id"] == d["id"] && x["live"] == false
    });
    let bytes = site
        .api
        .http
        .get(format!(
            "{base}/api/v1/desktops/{}/recording",
            d2["id"].as_str().unwrap()
        ))
        .bearer_auth(&site.api.token)
        .send()
        .unwrap()
        .bytes()
        .unwrap();
    let bytes = lz4_decompress(&bytes);
    assert!(bytes.starts_with(b"DBRDP1\n") && bytes.len() > 10_000);
    let utf16: Vec<u8> = VNC_PASSWORD
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    for needle in [VNC_PASSWORD.as_bytes(), &utf16] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "the recording holds the password"
        );
    }
    rt.block_on(async {
        let _ = b.c.clone().close().await;
    });
}
