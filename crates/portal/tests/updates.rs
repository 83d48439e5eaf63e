//! The Updates page over real HTTPS, on SQLite and PostgreSQL: the releases
//! and rollouts tables, a rollout started from the form and paused, resumed
//! and cancelled from its page, the device page's update line, a refused form
//! that creates nothing, and that it is the admins' alone (no link for others,
//! pages and forged forms refused).

use crate::common;

use common::{Browser, PASSWORD, TestServer, between};
use drawbridge_release::{
    PRODUCT_EDGE, PrivateKey, ReleaseMeta, SigningKeyCert, certify, sign_release, this_target,
};
use drawbridge_server::updates::store;

store_tests!(
    an_admin_starts_a_rollout_from_the_form_and_pauses_resumes_and_cancels_it,
    a_bad_form_shows_the_error_and_creates_nothing,
    only_admins_see_the_updates_and_forged_forms_change_nothing,
);

const PAGE: &str = "/portal/updates";

fn sha256_hex(b: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, b)
        .as_ref()
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// Trusts a new release root and stores a small fake edge binary of
/// `version` signed under it, as `drawbridge-server release root|add` do;
/// returns the release's id and SHA-256.
async fn stored_release(server: &TestServer, version: &str) -> (String, String) {
    let now = server.state.clock.unix();
    let root = PrivateKey::generate();
    let signing = PrivateKey::generate();
    let cert = certify(
        &root,
        &SigningKeyCert {
            name: "test signing key".into(),
            public_key: signing.public(),
            not_before: now - 60,
            not_after: now + 86_400,
        },
    );
    let binary = format!("#!/bin/sh\necho drawbridge-edge {version}\n").into_bytes();
    let sha256 = sha256_hex(&binary);
    let meta = ReleaseMeta {
        product: PRODUCT_EDGE.into(),
        version: version.into(),
        target: this_target(),
        size: binary.len() as u64,
        sha256: sha256.clone(),
        created: now,
        downgrade: false,
    };
    let signed = sign_release(&signing, cert, &meta);
    store::set_first_root(&server.state.store, &root.public(), now)
        .await
        .expect("release root");
    let r = store::add_release(&server.state.store, &binary, &signed.to_json(), now)
        .await
        .expect("release");
    (r.id, sha256)
}

/// The account "Plant" set up and its admin logged in.
async fn admin(server: &TestServer) -> Browser {
    let mut b = Browser::new(server);
    b.setup(&server.setup_token().await, "Plant").await;
    let dash = b.login("Plant", "admin", PASSWORD).await;
    assert!(
        dash.body.contains("id=\"nav-updates\""),
        "admins get the link"
    );
    b
}

/// The page's flash message, unescaped.
fn flash(body: &str) -> String {
    if body.contains("id=\"flash\"") {
        between(body, "id=\"flash\">", "</p>")
            .replace("&#39;", "'")
            .replace("&quot;", "\"")
            .replace("&amp;", "&")
    } else {
        String::new()
    }
}

/// The table row of `name` on a rollout's page.
fn row<'a>(body: &'a str, name: &str) -> &'a str {
    let table = between(body, "id=\"rollout-devices\"", "</table>");
    table
        .split("<tr>")
        .find(|r| r.contains(&format!(">{name}</a>")))
        .unwrap_or_else(|| panic!("{name} in {table}"))
}

/// Devices made on the devices page; their ids.
async fn devices(b: &mut Browser, names: &[&str]) -> Vec<String> {
    let csrf = b.get("/portal/devices").await.csrf();
    let mut ids = Vec::new();
    for n in names {
        ids.push(b.create_device(&csrf, n, "tcp:192.168.1.10:502").await);
    }
    ids
}

async fn an_admin_starts_a_rollout_from_the_form_and_pauses_resumes_and_cancels_it(
    server: TestServer,
) {
    let mut b = admin(&server).await;
    let empty = b.get(PAGE).await;
    assert_eq!(empty.status, 200, "{}", empty.body);
    assert!(empty.body.contains("id=\"no-releases\""), "{}", empty.body);
    assert!(
        !empty.body.contains("id=\"rollout-form\""),
        "no form without a release"
    );
    assert!(!empty.body.contains("<script"), "no script");

    let (release, sha256) = stored_release(&server, "1.2.3").await;
    let ids = devices(&mut b, &["press-1", "press-2", "press-3"]).await;
    let csrf = b.get(PAGE).await.csrf();
    let pool = b
        .post("/portal/access/pools", &[("csrf", &csrf), ("name", "line")])
        .await;
    assert_eq!(pool.status, 303, "{}", pool.body);
    let access = b.get("/portal/access").await;
    let pool_id = between(&access.body, "action=\"/portal/access/pools/", "/").to_string();
    let added = b
        .post(
            &format!("/portal/access/pools/{pool_id}/devices"),
            &[("csrf", &csrf), ("device_id", &ids[2])],
        )
        .await;
    assert_eq!(added.status, 303, "{}", added.body);

    let page = b.get(PAGE).await;
    let releases = between(&page.body, "id=\"release-table\"", "</table>");
    for part in ["1.2.3", this_target().as_str(), &sha256[..16]] {
        assert!(releases.contains(part), "{part} in {releases}");
    }
    assert!(page.body.contains("id=\"no-rollouts\""));
    let form = between(&page.body, "id=\"rollout-form\"", "</form>");
    assert!(form.contains(&format!("value=\"{release}\"")), "{form}");
    assert!(form.contains(&format!("value=\"{pool_id}\"")), "{form}");
    assert!(form.contains("id=\"downgrade-warning\""), "{form}");

    let r = b
        .post(
            "/portal/updates/rollouts",
            &[
                ("csrf", &csrf),
                ("release", &release),
                ("device", &ids[0]),
                ("device", &ids[1]),
                ("pool", &pool_id),
                ("canary", &ids[0]),
                ("canary_percent", "0"),
                ("soak_minutes", "30"),
                ("failure_threshold", "2"),
                ("window_start", "00:00"),
                ("window_end", "00:00"),
            ],
        )
        .await;
    assert_eq!(r.status, 303, "{}", r.body);
    let to = r.location().to_string();
    assert!(to.starts_with("/portal/updates/rollouts/"), "{to}");
    let page = b.follow(&r).await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert!(
        flash(&page.body).contains("started on 3 device(s)"),
        "{}",
        flash(&page.body)
    );
    assert!(page.body.contains("Rollout of 1.2.3"));
    assert!(page.body.contains("stage: canary"), "{}", page.body);
    assert!(page.body.contains("00:00–00:00 UTC"));
    let canary = row(&page.body, "press-1");
    assert!(
        canary.contains("canary") && canary.contains("offered"),
        "{canary}"
    );
    for other in ["press-2", "press-3"] {
        let r = row(&page.body, other);
        assert!(!r.contains("canary") && r.contains("pending"), "{r}");
    }
    assert!(page.body.contains("id=\"rollout-pause\""));
    assert!(!page.body.contains("id=\"rollout-resume\""));
    let listed = b.get(PAGE).await;
    let rollouts = between(&listed.body, "id=\"rollout-table\"", "</table>");
    for part in ["1.2.3", "running", "canary", "2 pending, 1 offered"] {
        assert!(rollouts.contains(part), "{part} in {rollouts}");
    }
    // The device page says where the device is.
    let dev = b.get(&format!("/portal/devices/{}", ids[1])).await;
    let line = between(&dev.body, "id=\"device-update\">", "</dd>");
    assert!(line.contains("1.2.3") && line.contains("pending"), "{line}");

    // Pause, resume, cancel: POST forms with the CSRF token.
    let no_token = b.post(&format!("{to}/pause"), &[]).await;
    assert_eq!(no_token.status, 403);
    let p = b.post(&format!("{to}/pause"), &[("csrf", &csrf)]).await;
    assert_eq!(p.status, 303, "{}", p.body);
    let page = b.follow(&p).await;
    assert!(flash(&page.body).contains("was paused"), "{}", page.body);
    assert!(between(&page.body, "id=\"rollout-state\">", "<").contains("paused"));
    assert!(
        row(&page.body, "press-1").contains("pending"),
        "offer withdrawn"
    );
    assert!(page.body.contains("id=\"rollout-resume\""));
    // Twice is the API's refusal, shown.
    let again = b.post(&format!("{to}/pause"), &[("csrf", &csrf)]).await;
    let page = b.follow(&again).await;
    assert!(
        flash(&page.body).contains("the rollout is paused"),
        "{}",
        page.body
    );

    let p = b.post(&format!("{to}/resume"), &[("csrf", &csrf)]).await;
    let page = b.follow(&p).await;
    assert!(between(&page.body, "id=\"rollout-state\">", "<").contains("running"));
    let p = b.post(&format!("{to}/cancel"), &[("csrf", &csrf)]).await;
    let page = b.follow(&p).await;
    assert!(flash(&page.body).contains("was cancelled"), "{}", page.body);
    assert!(between(&page.body, "id=\"rollout-state\">", "<").contains("cancelled"));
    for name in ["press-1", "press-2", "press-3"] {
        assert!(row(&page.body, name).contains("cancelled"), "{name}");
    }
    for button in ["rollout-pause", "rollout-resume", "rollout-cancel"] {
        assert!(!page.body.contains(button), "{button} after the end");
    }
    let unknown = b.post(&format!("{to}/explode"), &[("csrf", &csrf)]).await;
    assert_eq!(unknown.status, 404);
    // The audit page names the rollout its entries are about.
    let id = to.trim_start_matches("/portal/updates/rollouts/");
    let audit = b.get("/portal/audit").await;
    assert!(
        audit.body.contains(&format!("rollout {}", &id[..8])),
        "{}",
        audit.body
    );
    // A cancelled rollout leaves the device page.
    let dev = b.get(&format!("/portal/devices/{}", ids[1])).await;
    assert!(!dev.body.contains("id=\"device-update\""));
    assert!(dev.body.contains("id=\"agent-version\""));
}

async fn a_bad_form_shows_the_error_and_creates_nothing(server: TestServer) {
    let mut b = admin(&server).await;
    let (release, _) = stored_release(&server, "1.2.3").await;
    let ids = devices(&mut b, &["press-1", "press-2"]).await;
    let csrf = b.get(PAGE).await.csrf();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (
            vec![("device", &ids[0]), ("failure_threshold", "0")],
            "failure_threshold is 1 to 10000",
        ),
        (
            vec![("device", &ids[0]), ("failure_threshold", "many")],
            "Failure threshold: enter a whole number",
        ),
        (
            vec![("device", &ids[0]), ("canary_percent", "300")],
            "Canary share",
        ),
        (
            vec![("device", &ids[0]), ("canary", &ids[1])],
            "a canary must be one of the rollout's devices",
        ),
        (
            vec![("device", &ids[0]), ("window_start", "22:00")],
            "both ends of the window",
        ),
        (
            vec![
                ("device", &ids[0]),
                ("window_start", "25:00"),
                ("window_end", "04:00"),
            ],
            "HH:MM",
        ),
        (vec![], "names no device"),
        (
            vec![("device", &ids[0]), ("downgrade", "on")],
            "not signed as a downgrade release",
        ),
    ];
    for (extra, says) in cases {
        let mut form = vec![("csrf", csrf.as_str()), ("release", release.as_str())];
        form.extend(extra.iter().copied());
        let r = b.post("/portal/updates/rollouts", &form).await;
        assert_eq!(r.status, 303, "{says}: {}", r.body);
        assert_eq!(r.location(), PAGE, "{says}: back to the form");
        let page = b.follow(&r).await;
        assert!(
            page.body.contains("class=\"flash error\""),
            "{says}: {}",
            flash(&page.body)
        );
        assert!(
            flash(&page.body).contains(says),
            "{says}: {}",
            flash(&page.body)
        );
    }
    let unknown = b
        .post(
            "/portal/updates/rollouts",
            &[
                ("csrf", &csrf),
                ("release", "no-such-release"),
                ("device", &ids[0]),
            ],
        )
        .await;
    let page = b.follow(&unknown).await;
    assert!(
        flash(&page.body).contains("no such release"),
        "{}",
        page.body
    );
    assert_eq!(server.count("rollouts").await, 0, "nothing was created");
    assert_eq!(server.count("rollout_devices").await, 0);
}

async fn only_admins_see_the_updates_and_forged_forms_change_nothing(server: TestServer) {
    let mut admin_b = admin(&server).await;
    let (release, _) = stored_release(&server, "1.2.3").await;
    let ids = devices(&mut admin_b, &["press-1"]).await;
    let users = admin_b.get("/portal/users").await;
    admin_b.create_user(&users.csrf(), "uma", "user").await;
    admin_b
        .create_user(&users.csrf(), "sam", "session_admin")
        .await;
    admin_b.create_user(&users.csrf(), "ada", "auditor").await;
    let csrf = users.csrf();
    let r = admin_b
        .post(
            "/portal/updates/rollouts",
            &[("csrf", &csrf), ("release", &release), ("device", &ids[0])],
        )
        .await;
    let rollout = r.location().to_string();
    assert!(
        rollout.starts_with("/portal/updates/rollouts/"),
        "{rollout}"
    );

    for name in ["uma", "sam", "ada"] {
        let mut b = Browser::new(&server);
        let dash = b.login("Plant", name, PASSWORD).await;
        assert!(!dash.body.contains("nav-updates"), "{name}: no link");
        for page in [PAGE, rollout.as_str()] {
            let p = b.get(page).await;
            assert_eq!(p.status, 403, "{name} {page}: {}", p.body);
            assert!(!p.body.contains("1.2.3"), "{name} {page}");
        }
        let csrf = dash.csrf();
        let made = b
            .post(
                "/portal/updates/rollouts",
                &[("csrf", &csrf), ("release", &release), ("device", &ids[0])],
            )
            .await;
        assert_eq!(made.status, 303, "{name}: {}", made.body);
        for action in ["pause", "cancel"] {
            let r = b
                .post(&format!("{rollout}/{action}"), &[("csrf", &csrf)])
                .await;
            assert_eq!(r.status, 303, "{name} {action}: {}", r.body);
        }
    }
    assert_eq!(server.count("rollouts").await, 1, "no rollout was added");
    let state: String = sqlx::query_scalar("SELECT state FROM rollouts")
        .fetch_one(&server.state.store.pool)
        .await
        .unwrap();
    assert_eq!(state, "running", "nobody but the admin changed it");
}
