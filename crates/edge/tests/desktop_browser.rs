//! Remote desktops (VNC) in real Chromium, with the real server and edge
//! binaries and a real VNC server: TigerVNC's `Xvnc` on the machine's "LAN"
//! (127.0.0.5), released by the device firewall and marked `vnc`. A user opens
//! it from the portal and sees it (the colour `xsetroot` painted, in
//! Chromium's screenshot of the canvas) and types into it (`xev` on the X
//! server shows the keys); the desktop is recorded and replays to its last
//! frame; an admin watches it live; a `monitor` grant gets it view-only; and
//! nobody outside the session, nor a port it does not release, gets it.
//! Skips with a visible line without Chromium or the X tools (see
//! `common::vnc`).

use crate::common;

use common::vnc::*;
use common::*;
use drawbridge_testnet::browser::Driver;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

/// One desktop test at a time: each runs a server, an edge, Xvnc and one or
/// two Chromiums, and two cores hold one of them well, not five.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// `POST /api/v1/sessions/{sid}/web` for `target`, as `api`'s user.
fn open_web(api: &Api, sid: &str, device: &str, target: impl ToString) -> (u16, Value) {
    api.post(
        &format!("/sessions/{sid}/web"),
        json!({"device_id": device, "target": target.to_string()}),
    )
}

/// The viewer's status becomes `want` by `deadline`.
async fn status_by(c: &fantoccini::Client, want: &str, deadline: Instant, who: &str) {
    loop {
        let s = status(c).await;
        if s == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{who}: the viewer says {s:?}, not {want:?}, in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until the viewer is connected, failing at once if it asks for a password.
async fn connected_without_prompt(c: &fantoccini::Client, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = status(c).await;
        if s == want {
            break;
        }
        assert!(
            !s.contains("password") && !s.starts_with("Closed") && !s.starts_with("Refused"),
            "the viewer says {s:?}"
        );
        assert!(Instant::now() < deadline, "the viewer still says {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hidden = c
        .execute("return document.getElementById('password').hidden;", vec![])
        .await
        .unwrap();
    assert_eq!(hidden, Value::Bool(true), "the password form showed");
}

#[test]
fn an_assigned_user_sees_and_types_into_the_desktop_with_a_typed_then_a_stored_password() {
    if !have_desktop_tools(
        "an_assigned_user_sees_and_types_into_the_desktop_with_a_typed_then_a_stored_password",
        true,
    ) {
        return;
    }
    let _one = one_at_a_time();
    let site = Site::start(1);
    let target = site.xvnc().addr;
    let anna = site.user("anna", "full");
    let sid = site.session(&[&anna], &[target], &site.api_as("anna"));
    let keys = site.xvnc().watch_keys();
    let base = site.server.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let driver = Driver::start();
    let b = rt.block_on(Browser::start(&driver, &site.server));
    let c = &b.c;
    let portal = rt.block_on(async {
        portal_login(c, &base, "anna").await;
        let portal = c.window().await.unwrap();
        c.goto(&format!("{base}/portal/sessions/{sid}"))
            .await
            .unwrap();
        keep_screenshot(c, "session-open-desktop").await;
        click_to_new_tab(c, &format!("button.open-desktop[data-target=\"{target}\"]")).await;
        let url = c.current_url().await.unwrap();
        assert!(url.host_str().unwrap().ends_with(".web.localhost"), "{url}");
        assert_eq!(
            url.path(),
            "/",
            "the entry link is gone from the address bar"
        );
        // No password stored: the desktop asks, and the user types it.
        status_by(
            c,
            "The desktop asks for its VNC password",
            Instant::now() + Duration::from_secs(20),
            "anna",
        )
        .await;
        find(c, "#password-input")
            .await
            .send_keys(VNC_PASSWORD)
            .await
            .unwrap();
        find(c, "#password button[type=submit]")
            .await
            .click()
            .await
            .unwrap();
        connected_without_prompt(c, "Connected").await;
        wait_colour(c, MAGENTA, "anna", 15).await;
        keep_screenshot(c, "desktop-viewer").await;
        // Keys typed in Chromium reach the machine's X server.
        type_into_desktop(c, "zq").await;
        keys.wait_for(&["z", "q"]);
        // Closing the tab ends the desktop.
        c.close_window().await.unwrap();
        c.switch_to_window(portal.clone()).await.unwrap();
        portal
    });
    let first = site.wait_desktop(&sid, "the first desktop ended", |d| d["live"] == false);
    assert_eq!(first["user_id"], anna.as_str(), "{first}");
    assert_eq!(first["view_only"], false, "{first}");
    assert_eq!(first["end_reason"], "the viewer was closed", "{first}");

    // With the password stored, the server answers the VNC server itself: no prompt.
    site.store_password(target);
    rt.block_on(async {
        c.switch_to_window(portal).await.unwrap();
        open_desktop_from_portal(c, &base, &sid, target).await;
        connected_without_prompt(c, "Connected").await;
        wait_colour(c, MAGENTA, "anna (stored password)", 15).await;
        type_into_desktop(c, "x").await;
        keys.wait_for(&["x"]);
        let _ = c.clone().close().await;
    });
    let audit = site.api.get("/audit?action=desktop.open").to_string();
    assert!(
        audit.contains("\"typed\"") && audit.contains("\"stored\""),
        "the record says how each desktop got its password: {audit}"
    );
}

#[test]
fn an_ended_desktop_is_listed_with_its_hash_and_replays_to_its_last_frame() {
    if !have_desktop_tools(
        "an_ended_desktop_is_listed_with_its_hash_and_replays_to_its_last_frame",
        true,
    ) {
        return;
    }
    let _one = one_at_a_time();
    let site = Site::start(1);
    let target = site.xvnc().addr;
    let anna = site.user("anna", "full");
    site.store_password(target);
    let sid = site.session(&[&anna], &[target], &site.api_as("anna"));
    let (code, v) = site.api.post(
        "/users",
        json!({"username": "audrey", "role": "auditor", "password": PASSWORD}),
    );
    assert_eq!(code, 200, "{v}");
    let auditor = site.api_as("audrey");
    let base = site.server.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let driver = Driver::start();
    let user = rt.block_on(Browser::start(&driver, &site.server));
    rt.block_on(async {
        let c = &user.c;
        portal_login(c, &base, "anna").await;
        open_desktop_from_portal(c, &base, &sid, target).await;
        connected_without_prompt(c, "Connected").await;
        wait_colour(c, MAGENTA, "anna", 15).await;
        // Magenta for a while, then green: the last frame differs from the first.
        tokio::time::sleep(Duration::from_secs(3)).await;
        site.xvnc().paint(GREEN);
        wait_colour(c, GREEN, "anna", 15).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    });
    site.end(&sid);
    let deadline = Instant::now() + Duration::from_secs(5);
    rt.block_on(status_by(
        &user.c,
        "Closed: the session ended",
        deadline,
        "anna, after the session ended",
    ));
    let d = site.wait_desktop(&sid, "the desktop is listed ended", |d| {
        d["live"] == false && d["sha256"].is_string()
    });
    let id = d["id"].as_str().unwrap().to_string();
    let sha = d["sha256"].as_str().unwrap().to_string();
    assert!(
        sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()),
        "{d}"
    );
    assert_eq!(d["end_reason"], "the session ended", "{d}");
    assert_eq!(d["recorded"], true, "{d}");
    assert!(d["bytes"].as_u64().unwrap_or(0) > 0, "{d}");
    assert_eq!(d["target"], target.to_string(), "{d}");

    // The auditor replays it in a browser of their own: from the magenta start to the green end.
    let (code, v) = auditor.post(&format!("/desktops/{id}/replay"), json!({}));
    assert_eq!(code, 200, "{v}");
    let url = v["url"].as_str().unwrap().to_string();
    let watcher = rt.block_on(Browser::start(&driver, &site.server));
    rt.block_on(async {
        let c = &watcher.c;
        c.goto(&url).await.unwrap();
        status_by(
            c,
            "Recording (hash verified)",
            Instant::now() + Duration::from_secs(20),
            "the replay",
        )
        .await;
        wait_colour(c, MAGENTA, "the replay's start", 10).await;
        wait_js(
            c,
            "return document.body.dataset.replayed === 'end';",
            "the replay delivered its last frame",
            60,
        )
        .await;
        wait_colour(c, GREEN, "the replay's last frame", 10).await;
        keep_screenshot(c, "desktop-replay").await;
        let _ = c.clone().close().await;
        let _ = user.c.clone().close().await;
    });

    // The download is the recording on the record.
    let r = auditor
        .http
        .get(format!("{base}/api/v1/desktops/{id}/recording"))
        .bearer_auth(&auditor.token)
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-recording-intact"], "true");
    assert_eq!(r.headers()["x-recording-sha256"], sha.as_str());
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .ends_with(".dbrfb.lz4\""),
        "{:?}",
        r.headers()["content-disposition"]
    );
    let body = r.bytes().unwrap();
    let digest = ring::digest::digest(&ring::digest::SHA256, &body);
    assert_eq!(
        hex::encode(digest.as_ref()),
        sha,
        "the downloaded file hashes to the SHA-256 on the record"
    );
    let stream = lz4_decompress(&body);
    assert!(
        stream.starts_with(b"DBRFB1\n"),
        "lz4 -d opens it to a Drawbridge recording"
    );
}

#[test]
fn an_admin_watches_a_desktop_live_and_the_sessions_end_closes_both_viewers() {
    if !have_desktop_tools(
        "an_admin_watches_a_desktop_live_and_the_sessions_end_closes_both_viewers",
        true,
    ) {
        return;
    }
    let _one = one_at_a_time();
    let site = Site::start(1);
    let target = site.xvnc().addr;
    let anna = site.user("anna", "full");
    site.store_password(target);
    let sid = site.session(&[&anna], &[target], &site.api_as("anna"));
    let keys = site.xvnc().watch_keys();
    let base = site.server.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let driver = Driver::start();
    let user = rt.block_on(Browser::start(&driver, &site.server));
    let admin = rt.block_on(Browser::start(&driver, &site.server));
    let (u, a) = (&user.c, &admin.c);
    rt.block_on(async {
        portal_login(u, &base, "anna").await;
        open_desktop_from_portal(u, &base, &sid, target).await;
        connected_without_prompt(u, "Connected").await;
        wait_colour(u, MAGENTA, "anna", 15).await;
    });
    let d = site.wait_desktop(&sid, "anna's desktop is listed live", |d| d["live"] == true);
    let (code, v) = site.api.post(
        &format!("/desktops/{}/watch", d["id"].as_str().unwrap()),
        json!({}),
    );
    assert_eq!(code, 200, "{v}");
    let url = v["url"].as_str().unwrap().to_string();
    rt.block_on(async {
        a.goto(&url).await.unwrap();
        status_by(
            a,
            "Watching (read-only)",
            Instant::now() + Duration::from_secs(20),
            "the admin",
        )
        .await;
        wait_colour(a, MAGENTA, "the admin", 15).await;
        // The desktop changes: both see it.
        site.xvnc().paint(BLUE);
        wait_colour(u, BLUE, "anna", 15).await;
        wait_colour(a, BLUE, "the admin", 15).await;
        keep_screenshot(a, "desktop-watch").await;
        // Whatever the watcher's browser sends, even with noVNC told to send
        // input, never reaches the machine.
        a.execute("window.drawbridgeRfb.viewOnly = false;", vec![])
            .await
            .unwrap();
        type_into_desktop(a, "w").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            keys.pressed().is_empty(),
            "a watcher's keys reached the X server: {:?}",
            keys.pressed()
        );
        // anna still types, and the watcher is still connected.
        type_into_desktop(u, "u").await;
        keys.wait_for(&["u"]);
        assert_eq!(status(a).await, "Watching (read-only)");
    });
    // Ending the session closes both viewers within 5 s.
    site.end(&sid);
    let deadline = Instant::now() + Duration::from_secs(5);
    rt.block_on(async {
        status_by(u, "Closed: the session ended", deadline, "anna").await;
        status_by(a, "Closed: the desktop ended", deadline, "the admin").await;
        let _ = u.clone().close().await;
        let _ = a.clone().close().await;
    });
    assert_eq!(
        keys.pressed(),
        ["u"],
        "only anna's key reached the X server"
    );
}

#[test]
fn a_monitor_grant_gets_the_desktop_view_only_and_its_keys_never_reach_the_machine() {
    if !have_desktop_tools(
        "a_monitor_grant_gets_the_desktop_view_only_and_its_keys_never_reach_the_machine",
        true,
    ) {
        return;
    }
    let _one = one_at_a_time();
    let site = Site::start(1);
    let target = site.xvnc().addr;
    let mona = site.user("mona", "monitor");
    let me = site.admin_id();
    site.store_password(target);
    // mona watches over the admin's shoulder: both are assigned.
    let (code, v) = site.try_session(&[&mona, &me], &[target]);
    assert_eq!(
        code, 200,
        "a user with a monitor grant cannot be assigned to a session releasing the desktop \
         (sessions::check_assignment: a monitor access allows no target), so no one gets the \
         view-only desktop docs/desktops.md promises: {v}"
    );
    let sid = v["id"].as_str().unwrap().to_string();
    let (code, v) = site.api.post(&format!("/sessions/{sid}/start"), json!({}));
    assert_eq!(code, 200, "{v}");
    let keys = site.xvnc().watch_keys();
    let base = site.server.url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let driver = Driver::start();
    let b = rt.block_on(Browser::start(&driver, &site.server));
    let c = &b.c;
    rt.block_on(async {
        portal_login(c, &base, "mona").await;
        open_desktop_from_portal(c, &base, &sid, target).await;
        connected_without_prompt(c, "Connected (view only)").await;
        wait_colour(c, MAGENTA, "mona", 15).await;
        // As the viewer is, and as a viewer changed to send input anyway:
        // the server drops it.
        type_into_desktop(c, "m").await;
        c.execute("window.drawbridgeRfb.viewOnly = false;", vec![])
            .await
            .unwrap();
        type_into_desktop(c, "v").await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(
            keys.pressed().is_empty(),
            "a view-only user's keys reached the X server: {:?}",
            keys.pressed()
        );
        assert_eq!(status(c).await, "Connected (view only)");
    });
    let d = site.wait_desktop(&sid, "mona's desktop is listed", |d| {
        d["user_id"] == mona.as_str()
    });
    assert_eq!(d["view_only"], true, "{d}");
    // The control: the admin's keys on the same desktop do arrive.
    let (code, v) = open_web(&site.api, &sid, &site.device, target);
    assert_eq!(code, 200, "{v}");
    let url = v["url"].as_str().unwrap().to_string();
    rt.block_on(async {
        c.goto(&url).await.unwrap();
        connected_without_prompt(c, "Connected").await;
        type_into_desktop(c, "k").await;
        keys.wait_for(&["k"]);
        let _ = c.clone().close().await;
    });
    assert_eq!(keys.pressed(), ["k"], "only the admin's key arrived");
}

#[test]
fn a_desktop_opens_for_nobody_outside_the_session_nor_on_a_port_it_does_not_release() {
    if !have_desktop_tools(
        "a_desktop_opens_for_nobody_outside_the_session_nor_on_a_port_it_does_not_release",
        false,
    ) {
        return;
    }
    let _one = one_at_a_time();
    // Two desktops on the machine, both marked `vnc` and in the device
    // firewall; the session releases only the first.
    let site = Site::start(2);
    let (released, other) = (site.desktops[0].addr, site.desktops[1].addr);
    let anna = site.user("anna", "full");
    let bob = site.user("bob", "full");
    let (anna_api, bob_api) = (site.api_as("anna"), site.api_as("bob"));
    let sid = site.session(&[&anna], &[released], &anna_api);

    let (code, v) = open_web(&anna_api, &sid, &site.device, released);
    assert_eq!(code, 200, "the released desktop opens for its user: {v}");
    assert!(
        site.desktops[1].greets(),
        "the other desktop is up and answers on the LAN"
    );
    let (code, v) = open_web(&anna_api, &sid, &site.device, other);
    assert_eq!(code, 400, "a port the session does not release: {v}");
    assert!(
        v.to_string().contains("not a released"),
        "the refusal says why: {v}"
    );

    // bob has the same grant but is not assigned: the session is not his.
    let (code, v) = open_web(&bob_api, &sid, &site.device, released);
    assert_eq!(code, 404, "a user not assigned to the session: {v}");
    // In a session of his own, his desktop opens; anna's session still does not, nor his for her.
    let sid_bob = site.session(&[&bob], &[released], &bob_api);
    let (code, v) = open_web(&bob_api, &sid_bob, &site.device, released);
    assert_eq!(code, 200, "{v}");
    let (code, v) = open_web(&bob_api, &sid, &site.device, released);
    assert_eq!(code, 404, "a user of another session: {v}");
    let (code, v) = open_web(&anna_api, &sid_bob, &site.device, released);
    assert_eq!(code, 404, "a user of another session: {v}");

    // Once the session ended, its desktop opens for no one.
    site.end(&sid);
    let (code, v) = open_web(&anna_api, &sid, &site.device, released);
    assert_eq!(code, 409, "an ended session: {v}");
}
