//! Browser access in real Chromium, with the real server and edge binaries:
//! an assigned user opens a device's web page from the portal, and the page
//! is hostile. From its own origin it tries to read the portal's cookies, to
//! call the API with the browser's credentials, to post a form to the portal,
//! to set a cookie for the parent domain, and to send the browser to another
//! device's origin. Each attempt fails, and the test shows it. Skips with a
//! visible line without Chromium (see `drawbridge_testnet::browser`).

use crate::common;

use common::*;
use drawbridge_testnet::browser::{Driver, chrome_caps, have_browser, spki_hash};
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// What the hostile page does once loaded; it leaves its findings in
/// `window.results`.
fn hostile_page(server: &str, session: &str) -> String {
    format!(
        r#"<!doctype html><html><head><title>HMI A</title></head><body><h1 id="title">HMI A</h1><pre id="out"></pre>
<script>
(async () => {{
  const r = {{ cookies: document.cookie }};
  try {{
    const x = await fetch("{server}/api/v1/me", {{ credentials: "include" }});
    r.api = "status " + x.status;
  }} catch (e) {{ r.api = "blocked"; }}
  try {{
    await fetch("{server}/portal/sessions/{session}/end", {{ method: "POST", mode: "no-cors", credentials: "include",
      body: new URLSearchParams({{ csrf: "guess" }}) }});
    r.post = "sent";
  }} catch (e) {{ r.post = "blocked"; }}
  window.results = r;
  document.getElementById("out").textContent = JSON.stringify(r);
}})();
</script></body></html>"#
    )
}

/// Device A (hostile), device B (shows the cookies it gets), device C.
fn hmis(
    rt: &tokio::runtime::Runtime,
    server: String,
    session: std::sync::Arc<std::sync::Mutex<String>>,
) -> (SocketAddr, SocketAddr, SocketAddr) {
    let bind = || {
        let l = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let a = l.local_addr().unwrap();
        (l, a)
    };
    let (la, a) = bind();
    let (lb, b) = bind();
    let (lc, c) = bind();
    let app_a = axum::Router::new()
        .route(
            "/",
            axum::routing::get(move || {
                let page = hostile_page(&server, &session.lock().unwrap());
                async move {
                    (
                        [
                            ("set-cookie", "evil=1; Domain=web.localhost; Path=/"),
                            ("content-type", "text/html; charset=utf-8"),
                        ],
                        page,
                    )
                }
            }),
        )
        .route(
            "/form-attack",
            axum::routing::get(|axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                let target = url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
                    .find(|(k, _)| k == "to")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                axum::response::Html(format!(
                    r#"<form id="f" method="post" action="{target}"><input name="csrf" value="guess"></form><script>document.getElementById("f").submit()</script>"#
                ))
            }),
        )
        .route(
            "/go-other",
            axum::routing::get(|axum::extract::RawQuery(q): axum::extract::RawQuery| async move {
                let to = url::form_urlencoded::parse(q.unwrap_or_default().as_bytes())
                    .find(|(k, _)| k == "to")
                    .map(|(_, v)| v.into_owned())
                    .unwrap_or_default();
                (axum::http::StatusCode::FOUND, [("location", to)])
            }),
        );
    let app_b = axum::Router::new().route(
        "/",
        axum::routing::get(|h: axum::http::HeaderMap| async move {
            let cookies = h
                .get("cookie")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            axum::response::Html(format!(
                r#"<h1 id="title">HMI B</h1><pre id="cookies">[{cookies}]</pre>"#
            ))
        }),
    );
    let app_c = axum::Router::new().route(
        "/",
        axum::routing::get(|| async { axum::response::Html("<h1 id=\"title\">HMI C</h1>") }),
    );
    rt.spawn(async move { axum::serve(la, app_a).await.unwrap() });
    rt.spawn(async move { axum::serve(lb, app_b).await.unwrap() });
    rt.spawn(async move { axum::serve(lc, app_c).await.unwrap() });
    (a, b, c)
}

async fn find(c: &Client, css: &str) -> fantoccini::elements::Element {
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

async fn text(c: &Client, css: &str) -> String {
    find(c, css).await.text().await.unwrap_or_default()
}

/// Clicks an "Open" button (a form with target=_blank) and switches to the tab it opens.
async fn open_in_new_tab(c: &Client, target: SocketAddr) {
    click_to_new_tab(c, &format!("button.open-web[data-target=\"{target}\"]")).await;
}

/// The same from a device's page (an ad-hoc session for that web page).
async fn open_adhoc_in_new_tab(c: &Client, target: SocketAddr) {
    click_to_new_tab(
        c,
        &format!("button.open-web-adhoc[data-target=\"{target}\"]"),
    )
    .await;
}

async fn click_to_new_tab(c: &Client, css: &str) {
    let before = c.windows().await.unwrap();
    find(c, css).await.click().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = c.windows().await.unwrap();
        if let Some(w) = now.into_iter().find(|w| !before.contains(w)) {
            c.switch_to_window(w).await.unwrap();
            return;
        }
        assert!(Instant::now() < deadline, "no new tab");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn screenshot(c: &Client, name: &str) {
    if std::env::var("DRAWBRIDGE_SCREENSHOTS").as_deref() == Ok("1") {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("{name}.png")),
            c.screenshot().await.unwrap(),
        )
        .unwrap();
    }
}

#[test]
fn a_hostile_device_page_cannot_reach_the_portal_the_api_or_another_device() {
    if !have_browser("a_hostile_device_page_cannot_reach_the_portal_the_api_or_another_device") {
        return;
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (server, api, device, state) = setup(dir.path());
    let sid_cell = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (a, b, c) = hmis(&rt, server.url(), sid_cell.clone());
    // The device marks its three web UIs (the portal offers "Open" for those only).
    let web: Vec<Value> = [a, b, c]
        .iter()
        .map(|t| json!({"target": t.to_string(), "scheme": "http"}))
        .collect();
    let (sid, _agent) = lan_session(
        &api,
        &device,
        &state,
        &[a.port(), b.port(), c.port()],
        json!(web),
    );
    *sid_cell.lock().unwrap() = sid.clone();
    let (code, v) = api.call(
        reqwest::Method::PATCH,
        "/account",
        Some(json!({"settings": {"adhoc_allowed": true}})),
    );
    assert_eq!(code, 200, "{v}");
    // Device C's origin, made for this user but never entered in this browser.
    let (code, v) = api.post(
        &format!("/sessions/{sid}/web"),
        json!({"device_id": device, "target": c.to_string()}),
    );
    assert_eq!(code, 200, "{v}");
    let origin_c = v["origin"].as_str().unwrap().to_string();

    let profile = tempfile::tempdir().unwrap();
    let driver = Driver::start();
    let caps = chrome_caps(
        profile.path(),
        &spki_hash(&server.data.join("server.pem")),
        None,
    );
    let base = server.url();
    rt.block_on(async {
        let ch = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .expect("WebDriver session");
        // The user logs in to the portal and opens device A from the session page.
        ch.goto(&format!("{base}/portal/login")).await.unwrap();
        for (name, value) in [
            ("account", "acme"),
            ("username", "root"),
            ("password", PASSWORD),
        ] {
            find(&ch, &format!("input[name={name}]"))
                .await
                .send_keys(value)
                .await
                .unwrap();
        }
        find(&ch, "#login").await.click().await.unwrap();
        find(&ch, "#logout").await;
        ch.goto(&format!("{base}/portal/sessions/{sid}"))
            .await
            .unwrap();
        screenshot(&ch, "session-open-web").await;
        let portal = ch.window().await.unwrap();
        open_in_new_tab(&ch, a).await;
        assert_eq!(text(&ch, "#title").await, "HMI A");
        let url = ch.current_url().await.unwrap();
        assert!(url.host_str().unwrap().ends_with(".web.localhost"), "{url}");
        assert_eq!(
            url.path(),
            "/",
            "the entry link is gone from the address bar"
        );
        // The page's own findings.
        let deadline = Instant::now() + Duration::from_secs(15);
        let results = loop {
            let r = ch
                .execute("return window.results || null;", vec![])
                .await
                .unwrap();
            if !r.is_null() {
                break r;
            }
            assert!(Instant::now() < deadline, "the hostile page never finished");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let cookies = results["cookies"].as_str().unwrap();
        assert!(
            !cookies.contains("db_") && !cookies.contains("drawbridge"),
            "the page read our cookies: {cookies}"
        );
        assert!(
            results["api"] == "blocked" || results["api"] == "status 403",
            "the API answered a device page: {results}"
        );

        // A form posted from the device origin to the portal.
        let form = format!(
            "{}/form-attack?to={}",
            url.origin().ascii_serialization(),
            url::form_urlencoded::byte_serialize(
                format!("{base}/portal/sessions/{sid}/end").as_bytes()
            )
            .collect::<String>()
        );
        ch.goto(&form).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;

        // A redirect to another device's origin: no cookie there, no page.
        let go = format!(
            "{}/go-other?to={}",
            url.origin().ascii_serialization(),
            url::form_urlencoded::byte_serialize(format!("{origin_c}/").as_bytes())
                .collect::<String>()
        );
        ch.goto(&go).await.unwrap();
        let body = text(&ch, "body").await;
        assert!(
            body.contains("open this device page from the Drawbridge portal"),
            "{body}"
        );

        // Device B, opened properly: A's parent-domain cookie did not follow.
        ch.switch_to_window(portal.clone()).await.unwrap();
        open_in_new_tab(&ch, b).await;
        assert_eq!(text(&ch, "#title").await, "HMI B");
        let seen = text(&ch, "#cookies").await;
        assert!(
            !seen.contains("evil"),
            "a device set a cookie for another device: {seen}"
        );
        assert!(
            !seen.contains("db_") && !seen.contains("drawbridge"),
            "our cookies reached a device: {seen}"
        );

        // From the device's page, where the account allows ad-hoc connect: an
        // ad-hoc session for that web page only, opened in a new tab.
        ch.switch_to_window(portal.clone()).await.unwrap();
        ch.goto(&format!("{base}/portal/devices/{device}"))
            .await
            .unwrap();
        open_adhoc_in_new_tab(&ch, c).await;
        assert_eq!(text(&ch, "#title").await, "HMI C");
        let _ = ch.close().await;
    });
    drop(driver);
    // Nothing the page sent ended the session.
    assert_eq!(api.get(&format!("/sessions/{sid}"))["state"], "active");
}
