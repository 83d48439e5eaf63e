//! Signed edge updates on the server, both stores: a release is stored only
//! when it verifies under the trusted root (tampered, foreign, expired and
//! rotated-away signatures refused, nothing stored); rollouts offer canaries
//! first and the rest after the soak, never during a session or outside the
//! window, pause at the failure threshold and withdraw their offers; bad and
//! concurrent requests change nothing; the binary goes only to a device that
//! signs for it and has it offered; enrolment hands out the root to pin. The
//! edge's side runs with the real binaries in `crates/edge/tests/update.rs`.

use crate::common;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::TestApp;
use drawbridge_proto::update::{UpdateReport, UpdateState, fetch_message};
use drawbridge_release::{PrivateKey, ReleaseMeta, SigningKeyCert};
use drawbridge_server::updates::{offer, rollouts, store};
use http_body_util::BodyExt;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};
use tower::ServiceExt;

store_tests!(
    a_release_is_stored_only_when_it_verifies_under_the_trusted_root,
    a_root_changes_only_by_a_rotation_the_current_root_signed,
    canaries_go_first_and_the_rest_after_the_soak_without_failures,
    a_failure_at_the_threshold_pauses_the_rollout_and_withdraws_offers,
    a_failed_canary_pauses_the_rollout_whatever_the_threshold,
    a_release_whose_signing_key_expired_is_not_rolled_out_until_signed_again,
    no_offer_during_a_session_or_outside_the_window,
    bad_and_concurrent_rollout_requests_change_nothing,
    the_binary_goes_only_to_a_device_that_signs_for_it_and_has_it_offered,
    enrolment_hands_out_the_root_to_pin,
);

/// An operator's offline keys: a root and a signing key it certified.
struct Keys {
    root: PrivateKey,
    signing: PrivateKey,
    cert: drawbridge_release::Envelope,
}

fn keys(now: i64) -> Keys {
    let root = PrivateKey::generate();
    let signing = PrivateKey::generate();
    let cert = drawbridge_release::certify(
        &root,
        &SigningKeyCert {
            name: "release-2026".into(),
            public_key: signing.public(),
            not_before: now - 60,
            not_after: now + 86_400,
        },
    );
    Keys {
        root,
        signing,
        cert,
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, b).as_ref())
}

/// A binary and its signature file for `version`.
fn signed(k: &Keys, version: &str, binary: &[u8], now: i64) -> String {
    signed_as(k, version, binary, now, false)
}

fn signed_as(k: &Keys, version: &str, binary: &[u8], now: i64, downgrade: bool) -> String {
    drawbridge_release::sign_release(
        &k.signing,
        k.cert.clone(),
        &ReleaseMeta {
            product: drawbridge_release::PRODUCT_EDGE.into(),
            version: version.into(),
            target: drawbridge_release::this_target(),
            size: binary.len() as u64,
            sha256: sha256_hex(binary),
            created: now,
            downgrade,
        },
    )
    .to_json()
}

async fn trusted(app: &TestApp) -> Keys {
    let now = app.state.now();
    let k = keys(now);
    store::set_first_root(&app.state.store, &k.root.public(), now)
        .await
        .expect("first root");
    k
}

async fn add(app: &TestApp, k: &Keys, version: &str) -> String {
    let now = app.state.now();
    let bin = format!("edge binary {version}").into_bytes();
    store::add_release(&app.state.store, &bin, &signed(k, version, &bin, now), now)
        .await
        .expect("add release")
        .id
}

async fn a_release_is_stored_only_when_it_verifies_under_the_trusted_root(app: TestApp) {
    let now = app.state.now();
    let st = &app.state.store;
    let bin = b"the new edge".to_vec();
    let k = keys(now);
    // No root yet: nothing can be added.
    let e = store::add_release(st, &bin, &signed(&k, "1.0.0", &bin, now), now)
        .await
        .unwrap_err();
    assert!(e.message.contains("no release root"), "{}", e.message);
    store::set_first_root(st, &k.root.public(), now)
        .await
        .expect("root");

    // Signed under another root; a tampered binary; a signing key expired;
    // a payload changed after signing; garbage. All refused, nothing stored.
    let stranger = keys(now);
    let expired = Keys {
        cert: drawbridge_release::certify(
            &k.root,
            &SigningKeyCert {
                name: "old".into(),
                public_key: k.signing.public(),
                not_before: now - 10 * 86_400,
                not_after: now - 86_400,
            },
        ),
        root: PrivateKey::generate(),
        signing: PrivateKey::from_file_text(&k.signing.to_file_text()).expect("key"),
    };
    let mut tampered = bin.clone();
    tampered[0] ^= 1;
    let good = signed(&k, "1.0.0", &bin, now);
    let mut edited: Value = serde_json::from_str(&good).expect("json");
    let payload = edited["release"]["payload"].as_str().unwrap().to_string();
    let mut meta: Value =
        serde_json::from_slice(&STANDARD.decode(payload).expect("b64")).expect("meta");
    meta["version"] = json!("9.0.0");
    edited["release"]["payload"] = json!(STANDARD.encode(meta.to_string()));
    for (what, b, s) in [
        (
            "foreign root",
            bin.clone(),
            signed(&stranger, "1.0.0", &bin, now),
        ),
        ("tampered binary", tampered, good.clone()),
        (
            "expired signing key",
            bin.clone(),
            signed(&expired, "1.0.0", &bin, now),
        ),
        ("edited metadata", bin.clone(), edited.to_string()),
        ("not json", bin.clone(), "{".into()),
        ("too long", bin.clone(), "x".repeat(20_000)),
    ] {
        let r = store::add_release(st, &b, &s, now).await;
        assert!(r.is_err(), "{what} was accepted");
    }
    assert_eq!(app.count("releases").await, 0);
    assert_eq!(app.count("release_chunks").await, 0);

    // The good one, once; the same version and target again is a conflict.
    let r = store::add_release(st, &bin, &good, now)
        .await
        .expect("good");
    assert_eq!(r.version, "1.0.0");
    assert_eq!(r.size, bin.len() as u64);
    // The same binary again (signed again, say) keeps its release; another
    // binary under the same version and target is a conflict.
    let again = store::add_release(st, &bin, &good, now)
        .await
        .expect("the same binary again");
    assert_eq!(again.id, r.id);
    let other = b"another edge".to_vec();
    let e = store::add_release(st, &other, &signed(&k, "1.0.0", &other, now), now)
        .await
        .unwrap_err();
    assert!(e.message.contains("another binary"), "{}", e.message);
    assert_eq!(app.count("releases").await, 1);
    // A binary larger than one chunk comes back whole.
    let big: Vec<u8> = (0..(store::CHUNK * 2 + 17))
        .map(|i| (i % 251) as u8)
        .collect();
    let big_id = store::add_release(st, &big, &signed(&k, "1.1.0", &big, now), now)
        .await
        .expect("big")
        .id;
    let mut back = Vec::new();
    for seq in 0..3 {
        back.extend(
            store::chunk(st, &big_id, seq)
                .await
                .unwrap()
                .expect("chunk"),
        );
    }
    assert_eq!(back, big);

    // Admins list releases; others may not.
    let acct = app.account("acme").await;
    let (s, v) = app.get("/api/v1/releases", &acct.admin).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v.as_array().unwrap().len(), 2);
    let (_, user) = app.user(&acct, "uma", "user").await;
    assert_eq!(
        app.get("/api/v1/releases", &user).await.0,
        StatusCode::FORBIDDEN
    );
}

async fn a_root_changes_only_by_a_rotation_the_current_root_signed(app: TestApp) {
    let now = app.state.now();
    let st = &app.state.store;
    let k = trusted(&app).await;
    // A second first root is refused.
    assert!(
        store::set_first_root(st, &PrivateKey::generate().public(), now)
            .await
            .is_err()
    );
    // A rotation signed by a stranger, and garbage, are refused.
    let next = PrivateKey::generate();
    let stranger = PrivateKey::generate();
    let forged = drawbridge_release::rotate_root(&stranger, &next.public(), now);
    assert!(store::rotate_root(st, &forged, now).await.is_err());
    assert!(store::rotate_root(st, "{}", now).await.is_err());
    assert_eq!(app.count("release_roots").await, 1);
    // The real one moves the root; releases are then checked under the new root.
    let rotation = drawbridge_release::rotate_root(&k.root, &next.public(), now);
    assert_eq!(
        store::rotate_root(st, &rotation, now)
            .await
            .expect("rotate"),
        next.public()
    );
    let roots = store::roots(st).await.unwrap().expect("roots");
    assert_eq!(roots.first, k.root.public());
    assert_eq!(roots.current, next.public());
    assert_eq!(roots.rotations, vec![rotation.clone()]);
    let bin = b"edge".to_vec();
    assert!(
        store::add_release(st, &bin, &signed(&k, "2.0.0", &bin, now), now)
            .await
            .is_err(),
        "a signing key of the old root"
    );
    let k2 = Keys {
        cert: drawbridge_release::certify(
            &next,
            &SigningKeyCert {
                name: "after".into(),
                public_key: k.signing.public(),
                not_before: now - 1,
                not_after: now + 3600,
            },
        ),
        root: next,
        signing: k.signing,
    };
    store::add_release(st, &bin, &signed(&k2, "2.0.0", &bin, now), now)
        .await
        .expect("under the new root");
    // The same rotation twice changes nothing.
    assert!(store::rotate_root(st, &rotation, now).await.is_err());
    assert_eq!(app.count("release_roots").await, 2);
}

/// Three devices reporting version 1.0.0.
async fn fleet(app: &TestApp, acct: &common::Account) -> Vec<String> {
    let mut ids = Vec::new();
    for n in ["press-1", "press-2", "press-3"] {
        let (id, _) = app.device(acct, n).await;
        sqlx::query("UPDATE devices SET agent_version = '1.0.0' WHERE id = $1")
            .bind(&id)
            .execute(&app.state.store.pool)
            .await
            .unwrap();
        ids.push(id);
    }
    ids
}

async fn row_state(app: &TestApp, rollout: &str, device: &str) -> String {
    sqlx::query_scalar("SELECT state FROM rollout_devices WHERE rollout_id = $1 AND device_id = $2")
        .bind(rollout)
        .bind(device)
        .fetch_one(&app.state.store.pool)
        .await
        .expect("row")
}

fn report(rollout: &str, release: &str, state: UpdateState) -> UpdateReport {
    UpdateReport {
        rollout_id: rollout.into(),
        release_id: release.into(),
        state,
        running: "1.0.0".into(),
        message: String::new(),
    }
}

async fn canaries_go_first_and_the_rest_after_the_soak_without_failures(app: TestApp) {
    let k = trusted(&app).await;
    let release = add(&app, &k, "1.1.0").await;
    let acct = app.account("acme").await;
    let ids = fleet(&app, &acct).await;
    let v = app
        .ok(
            Method::POST,
            "/api/v1/rollouts",
            &acct.admin,
            Some(json!({"release_id": release, "devices": ids, "canaries": [ids[1]], "soak_minutes": 60})),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["stage"], "canary");
    // Only the canary is offered.
    assert_eq!(row_state(&app, &id, &ids[1]).await, "offered");
    assert_eq!(row_state(&app, &id, &ids[0]).await, "pending");
    assert!(
        offer::offer_for(&app.state, &ids[0])
            .await
            .unwrap()
            .is_none()
    );
    let o = offer::offer_for(&app.state, &ids[1])
        .await
        .unwrap()
        .expect("the canary's offer");
    assert_eq!(o.version, "1.1.0");
    assert_eq!(o.root, k.root.public().to_string());
    for s in [
        UpdateState::Downloading,
        UpdateState::Installing,
        UpdateState::Succeeded,
    ] {
        offer::on_report(&app.state, &acct.id, &ids[1], &report(&id, &release, s))
            .await
            .expect("report");
    }
    // Succeeded, but the soak has not passed: the rest waits.
    rollouts::advance(&app.state).await.unwrap();
    assert_eq!(row_state(&app, &id, &ids[0]).await, "pending");
    app.clock().advance(61 * 60);
    rollouts::advance(&app.state).await.unwrap();
    rollouts::advance(&app.state).await.unwrap();
    assert_eq!(row_state(&app, &id, &ids[0]).await, "offered");
    assert_eq!(row_state(&app, &id, &ids[2]).await, "offered");
    // A report after the end changes nothing; the rollout ends when all did.
    for d in [&ids[0], &ids[2]] {
        offer::on_report(
            &app.state,
            &acct.id,
            d,
            &report(&id, &release, UpdateState::Succeeded),
        )
        .await
        .unwrap();
    }
    offer::on_report(
        &app.state,
        &acct.id,
        &ids[1],
        &report(&id, &release, UpdateState::RolledBack),
    )
    .await
    .unwrap();
    assert_eq!(row_state(&app, &id, &ids[1]).await, "succeeded");
    rollouts::advance(&app.state).await.unwrap();
    // The clock moved past the login's idle timeout: log in again.
    let admin = app.token("acme", "admin").await;
    let v = app
        .ok(Method::GET, &format!("/api/v1/rollouts/{id}"), &admin, None)
        .await;
    assert_eq!(v["state"], "done", "{v}");
    assert_eq!(v["counts"]["succeeded"], 3);
    // Every step is on the record.
    let (_, audit) = app.get("/api/v1/audit?limit=500", &admin).await;
    let list = audit
        .as_array()
        .or_else(|| audit["entries"].as_array())
        .unwrap_or_else(|| panic!("audit: {audit}"));
    let actions: Vec<&str> = list.iter().filter_map(|e| e["action"].as_str()).collect();
    for a in [
        "rollout.create",
        "update.offer",
        "update.downloading",
        "update.succeeded",
        "rollout.stage",
        "rollout.done",
    ] {
        assert!(actions.contains(&a), "{a} missing from {actions:?}");
    }
}

async fn a_failure_at_the_threshold_pauses_the_rollout_and_withdraws_offers(app: TestApp) {
    let k = trusted(&app).await;
    let release = add(&app, &k, "1.1.0").await;
    let acct = app.account("acme").await;
    let ids = fleet(&app, &acct).await;
    let v = app
        .ok(
            Method::POST,
            "/api/v1/rollouts",
            &acct.admin,
            Some(
                json!({"release_id": release, "pools": [], "devices": ids, "failure_threshold": 1}),
            ),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(v["stage"], "all");
    for d in &ids {
        assert_eq!(row_state(&app, &id, d).await, "offered");
    }
    offer::on_report(
        &app.state,
        &acct.id,
        &ids[2],
        &report(&id, &release, UpdateState::Installing),
    )
    .await
    .unwrap();
    offer::on_report(
        &app.state,
        &acct.id,
        &ids[0],
        &report(&id, &release, UpdateState::RolledBack),
    )
    .await
    .unwrap();
    let v = app
        .ok(
            Method::GET,
            &format!("/api/v1/rollouts/{id}"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(v["state"], "paused", "{v}");
    assert!(v["paused_reason"].as_str().unwrap().contains("failed"));
    // The offer not yet being installed is withdrawn; the one installing stays.
    assert_eq!(row_state(&app, &id, &ids[1]).await, "pending");
    assert_eq!(row_state(&app, &id, &ids[2]).await, "installing");
    assert!(
        offer::offer_for(&app.state, &ids[1])
            .await
            .unwrap()
            .is_none()
    );
    // A report for a withdrawn offer does not move it.
    offer::on_report(
        &app.state,
        &acct.id,
        &ids[1],
        &report(&id, &release, UpdateState::Downloading),
    )
    .await
    .unwrap();
    assert_eq!(row_state(&app, &id, &ids[1]).await, "pending");
    // Resumed by an admin (only): offered again, until the next failure.
    let (_, user) = app.user(&acct, "uma", "user").await;
    assert_eq!(
        app.post(&format!("/api/v1/rollouts/{id}/resume"), &user, json!({}))
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let v = app
        .ok(
            Method::POST,
            &format!("/api/v1/rollouts/{id}/resume"),
            &acct.admin,
            None,
        )
        .await;
    // Resuming goes on past the failure so far (it stays on record): running,
    // and the withdrawn offer is made again.
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(v["paused_reason"], Value::Null, "{v}");
    rollouts::advance(&app.state).await.unwrap();
    let v = app
        .get(&format!("/api/v1/rollouts/{id}"), &acct.admin)
        .await
        .1;
    assert_eq!(v["state"], "running", "{v}");
    assert_eq!(row_state(&app, &id, &ids[0]).await, "rolled_back");
    assert_eq!(row_state(&app, &id, &ids[1]).await, "offered");
    // The next failure counts again: paused at once (threshold 1).
    offer::on_report(
        &app.state,
        &acct.id,
        &ids[1],
        &report(&id, &release, UpdateState::Failed),
    )
    .await
    .unwrap();
    let v = app
        .get(&format!("/api/v1/rollouts/{id}"), &acct.admin)
        .await
        .1;
    assert_eq!(v["state"], "paused", "{v}");
    assert!(
        v["paused_reason"].as_str().unwrap().starts_with("1 device"),
        "{v}"
    );
    let v = app
        .ok(
            Method::POST,
            &format!("/api/v1/rollouts/{id}/cancel"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(v["state"], "cancelled");
    // Final states stay as they were; nothing else is offered any more.
    assert_eq!(row_state(&app, &id, &ids[1]).await, "failed");
    assert!(
        offer::offer_for(&app.state, &ids[1])
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        app.post(
            &format!("/api/v1/rollouts/{id}/resume"),
            &acct.admin,
            json!({})
        )
        .await
        .0,
        StatusCode::CONFLICT
    );
}

async fn a_failed_canary_pauses_the_rollout_whatever_the_threshold(app: TestApp) {
    let k = trusted(&app).await;
    let release = add(&app, &k, "1.1.0").await;
    let acct = app.account("acme").await;
    let ids = fleet(&app, &acct).await;
    let v = app
        .ok(
            Method::POST,
            "/api/v1/rollouts",
            &acct.admin,
            Some(
                json!({"release_id": release, "devices": ids, "canaries": [ids[0]],
                        "soak_minutes": 10, "failure_threshold": 5}),
            ),
        )
        .await;
    let id = v["id"].as_str().unwrap().to_string();
    offer::on_report(
        &app.state,
        &acct.id,
        &ids[0],
        &report(&id, &release, UpdateState::RolledBack),
    )
    .await
    .unwrap();
    // Well under the threshold, and yet the rest is not offered, however long
    // one waits: the rollout waits for the admins.
    app.clock().advance(11 * 60);
    for _ in 0..3 {
        rollouts::advance(&app.state).await.unwrap();
    }
    let admin = app.token("acme", "admin").await;
    let v = app.get(&format!("/api/v1/rollouts/{id}"), &admin).await.1;
    assert_eq!(v["state"], "paused", "{v}");
    assert_eq!(v["stage"], "canary", "{v}");
    assert!(
        v["paused_reason"]
            .as_str()
            .unwrap()
            .contains("canary press-1 failed"),
        "{v}"
    );
    for d in &ids[1..] {
        assert_eq!(row_state(&app, &id, d).await, "pending");
    }
    // Resumed past it: the rest goes after a soak counted from the resume.
    app.ok(
        Method::POST,
        &format!("/api/v1/rollouts/{id}/resume"),
        &admin,
        None,
    )
    .await;
    rollouts::advance(&app.state).await.unwrap();
    assert_eq!(row_state(&app, &id, &ids[1]).await, "pending");
    app.clock().advance(11 * 60);
    rollouts::advance(&app.state).await.unwrap();
    rollouts::advance(&app.state).await.unwrap();
    for d in &ids[1..] {
        assert_eq!(row_state(&app, &id, d).await, "offered");
    }
    // The resume and the failures it went past are on the record.
    let admin = app.token("acme", "admin").await;
    let (_, audit) = app
        .get("/api/v1/audit?limit=500&action=rollout.resume", &admin)
        .await;
    let text = audit.to_string();
    assert!(text.contains("\"failures_passed\":1"), "{text}");
}

async fn a_release_whose_signing_key_expired_is_not_rolled_out_until_signed_again(app: TestApp) {
    let k = trusted(&app).await;
    let now = app.state.now();
    let bin = b"edge 1.1.0".to_vec();
    let first = store::add_release(&app.state.store, &bin, &signed(&k, "1.1.0", &bin, now), now)
        .await
        .expect("release");
    let acct = app.account("acme").await;
    let ids = fleet(&app, &acct).await;
    // Two days on, the signing key's certificate (one day) has expired: an
    // edge would refuse the release, so the server does not roll it out.
    app.clock().advance(2 * 86_400);
    let admin = app.token("acme", "admin").await;
    let (st, v) = app
        .post(
            "/api/v1/rollouts",
            &admin,
            json!({"release_id": first.id, "devices": [ids[0]]}),
        )
        .await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .unwrap_or_default()
            .contains("sign it again"),
        "{v}"
    );
    assert_eq!(app.count("rollouts").await, 0);
    // The operator certifies a new signing key and signs the same binary again:
    // the release keeps its id, and now rolls out.
    let now = app.state.now();
    let fresh = keys(now);
    let k2 = Keys {
        cert: drawbridge_release::certify(
            &k.root,
            &SigningKeyCert {
                name: "release-2026-b".into(),
                public_key: fresh.signing.public(),
                not_before: now - 60,
                not_after: now + 86_400,
            },
        ),
        root: fresh.root,
        signing: fresh.signing,
    };
    let resigned = signed(&k2, "1.1.0", &bin, now);
    let again = store::add_release(&app.state.store, &bin, &resigned, now)
        .await
        .expect("signed again");
    assert_eq!(again.id, first.id);
    assert_eq!(app.count("releases").await, 1);
    // Another binary under the same version is still a conflict.
    let other = b"edge 1.1.0, changed".to_vec();
    assert!(
        store::add_release(
            &app.state.store,
            &other,
            &signed(&k2, "1.1.0", &other, now),
            now
        )
        .await
        .is_err()
    );
    let (st, v) = app
        .post(
            "/api/v1/rollouts",
            &admin,
            json!({"release_id": first.id, "devices": [ids[0]]}),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{v}");
    let o = offer::offer_for(&app.state, &ids[0])
        .await
        .unwrap()
        .expect("offer");
    assert_eq!(o.signed, resigned, "the offer carries the new signature");
}

async fn no_offer_during_a_session_or_outside_the_window(app: TestApp) {
    let k = trusted(&app).await;
    let release = add(&app, &k, "1.1.0").await;
    let acct = app.account("acme").await;
    let ids = fleet(&app, &acct).await;
    // A session active on press-1 (set in the store: admins do not start sessions).
    let sid = app.session(&acct.admin, &ids[0], &[]).await;
    sqlx::query("UPDATE sessions SET state = 'active' WHERE id = $1")
        .bind(&sid)
        .execute(&app.state.store.pool)
        .await
        .unwrap();
    // A window that is closed now (it opens in two hours, for one hour).
    let minute = ((app.state.now().rem_euclid(86_400)) / 60) as u32;
    let hhmm = |m: u32| format!("{:02}:{:02}", (m % 1440) / 60, m % 60);
    let v = app
        .ok(
            Method::POST,
            "/api/v1/rollouts",
            &acct.admin,
            Some(json!({"release_id": release, "devices": [ids[1]],
                        "window": {"start": hhmm(minute + 120), "end": hhmm(minute + 180)}})),
        )
        .await;
    let windowed = v["id"].as_str().unwrap().to_string();
    let v = app
        .ok(
            Method::POST,
            "/api/v1/rollouts",
            &acct.admin,
            Some(json!({"release_id": release, "devices": [ids[0]]})),
        )
        .await;
    let busy = v["id"].as_str().unwrap().to_string();
    rollouts::advance(&app.state).await.unwrap();
    assert_eq!(row_state(&app, &windowed, &ids[1]).await, "pending");
    assert_eq!(row_state(&app, &busy, &ids[0]).await, "pending");
    // The window opens; the session ends: both are offered.
    app.clock().advance(125 * 60);
    sqlx::query("UPDATE sessions SET state = 'ended' WHERE id = $1")
        .bind(&sid)
        .execute(&app.state.store.pool)
        .await
        .unwrap();
    rollouts::advance(&app.state).await.unwrap();
    assert_eq!(row_state(&app, &windowed, &ids[1]).await, "offered");
    assert_eq!(row_state(&app, &busy, &ids[0]).await, "offered");
}

async fn bad_and_concurrent_rollout_requests_change_nothing(app: TestApp) {
    let k = trusted(&app).await;
    let release = add(&app, &k, "1.1.0").await;
    let older = add(&app, &k, "0.9.0").await;
    let acct = app.account("acme").await;
    let other = app.account("globex").await;
    let ids = fleet(&app, &acct).await;
    let (foreign, _) = app.device(&other, "theirs").await;
    let (_, user) = app.user(&acct, "uma", "session_admin").await;
    for (what, token, body) in [
        ("array body", &acct.admin, json!([release, ids])),
        (
            "unknown field",
            &acct.admin,
            json!({"release_id": release, "devices": ids, "force": true}),
        ),
        ("no device", &acct.admin, json!({"release_id": release})),
        (
            "foreign device",
            &acct.admin,
            json!({"release_id": release, "devices": [foreign]}),
        ),
        (
            "unknown release",
            &acct.admin,
            json!({"release_id": "nope", "devices": ids}),
        ),
        (
            "canary outside",
            &acct.admin,
            json!({"release_id": release, "devices": [ids[0]], "canaries": [ids[1]]}),
        ),
        (
            "percent",
            &acct.admin,
            json!({"release_id": release, "devices": ids, "canary_percent": 101}),
        ),
        (
            "threshold",
            &acct.admin,
            json!({"release_id": release, "devices": ids, "failure_threshold": 0}),
        ),
        (
            "window",
            &acct.admin,
            json!({"release_id": release, "devices": ids, "window": {"start": "25:00", "end": "01:00"}}),
        ),
        (
            "downgrade unsigned",
            &acct.admin,
            json!({"release_id": older, "devices": ids, "downgrade": true}),
        ),
        (
            "not an admin",
            &user,
            json!({"release_id": release, "devices": ids}),
        ),
    ] {
        let (s, v) = app.post("/api/v1/rollouts", token, body).await;
        assert!(s.is_client_error(), "{what}: {s} {v}");
    }
    assert_eq!(app.count("rollouts").await, 0);
    assert_eq!(app.count("rollout_devices").await, 0);
    // The other account cannot see or touch this account's rollouts.
    let v = app
        .ok(
            Method::POST,
            "/api/v1/rollouts",
            &acct.admin,
            Some(json!({"release_id": release, "devices": [ids[0]]})),
        )
        .await;
    let id = v["id"].as_str().unwrap();
    assert_eq!(
        app.get(&format!("/api/v1/rollouts/{id}"), &other.admin)
            .await
            .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.post(
            &format!("/api/v1/rollouts/{id}/cancel"),
            &other.admin,
            json!({})
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    assert!(
        app.get("/api/v1/rollouts", &other.admin)
            .await
            .1
            .as_array()
            .unwrap()
            .is_empty()
    );
    // An older release without a downgrade: the device is skipped, not
    // offered, and that is no failure (the rollout is done, not paused).
    let v = app
        .ok(
            Method::POST,
            "/api/v1/rollouts",
            &acct.admin,
            Some(json!({"release_id": older, "devices": [ids[2]], "failure_threshold": 1})),
        )
        .await;
    let skipped = v["id"].as_str().unwrap().to_string();
    assert_eq!(row_state(&app, &skipped, &ids[2]).await, "skipped");
    rollouts::advance(&app.state).await.unwrap();
    let v = app
        .get(&format!("/api/v1/rollouts/{skipped}"), &acct.admin)
        .await
        .1;
    assert_eq!(v["state"], "done", "{v}");
    // 30 rollouts at once for the same device: exactly one takes it.
    let calls = (0..30).map(|_| {
        app.post(
            "/api/v1/rollouts",
            &acct.admin,
            json!({"release_id": release, "devices": [ids[1]]}),
        )
    });
    let mut created = 0;
    for (s, v) in futures_util::future::join_all(calls).await {
        if s == StatusCode::CREATED {
            created += 1;
        } else {
            assert_eq!(s, StatusCode::CONFLICT, "{v}");
        }
    }
    assert_eq!(created, 1);
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM rollout_devices WHERE device_id = $1")
        .bind(&ids[1])
        .fetch_one(&app.state.store.pool)
        .await
        .unwrap();
    assert_eq!(n, 1);
}

fn fetch(release: &str, device: &str, key: &Ed25519KeyPair, time: i64) -> Request<Body> {
    let sig = STANDARD.encode(key.sign(&fetch_message(device, release, time)).as_ref());
    Request::builder()
        .method(Method::GET)
        .uri(format!("/api/v1/edge/releases/{release}"))
        .header("x-drawbridge-device", device)
        .header("x-drawbridge-time", time.to_string())
        .header("x-drawbridge-signature", sig)
        .body(Body::empty())
        .unwrap()
}

async fn the_binary_goes_only_to_a_device_that_signs_for_it_and_has_it_offered(app: TestApp) {
    let k = trusted(&app).await;
    let now = app.state.now();
    let bin: Vec<u8> = (0..(store::CHUNK + 5)).map(|i| (i % 13) as u8).collect();
    let release = store::add_release(&app.state.store, &bin, &signed(&k, "1.1.0", &bin, now), now)
        .await
        .unwrap()
        .id;
    let acct = app.account("acme").await;
    let ids = fleet(&app, &acct).await;
    // Give press-1 and press-2 identity keys, as enrolment would.
    let mut keys = Vec::new();
    for d in &ids[..2] {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        sqlx::query("UPDATE devices SET public_key = $1, enrolled = 1 WHERE id = $2")
            .bind(STANDARD.encode(key.public_key().as_ref()))
            .bind(d)
            .execute(&app.state.store.pool)
            .await
            .unwrap();
        keys.push(key);
    }
    // Not offered yet: not found, even with a good signature.
    assert_eq!(
        app.send(fetch(&release, &ids[0], &keys[0], now)).await.0,
        StatusCode::NOT_FOUND
    );
    app.ok(
        Method::POST,
        "/api/v1/rollouts",
        &acct.admin,
        Some(json!({"release_id": release, "devices": [ids[0]]})),
    )
    .await;
    // No headers, another device's key, an old time, the other device (not offered).
    let bare = Request::builder()
        .uri(format!("/api/v1/edge/releases/{release}"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(app.send(bare).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(
        app.send(fetch(&release, &ids[0], &keys[1], now)).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.send(fetch(&release, &ids[0], &keys[0], now - 600))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.send(fetch(&release, &ids[1], &keys[1], now)).await.0,
        StatusCode::NOT_FOUND
    );
    // The device it is offered to gets it whole.
    let resp = app
        .app
        .clone()
        .oneshot(fetch(&release, &ids[0], &keys[0], now))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body.as_ref(), &bin[..]);
    // Disabled: refused again.
    sqlx::query("UPDATE devices SET disabled = 1 WHERE id = $1")
        .bind(&ids[0])
        .execute(&app.state.store.pool)
        .await
        .unwrap();
    assert_eq!(
        app.send(fetch(&release, &ids[0], &keys[0], now)).await.0,
        StatusCode::UNAUTHORIZED
    );
}

async fn enrolment_hands_out_the_root_to_pin(app: TestApp) {
    let acct = app.account("acme").await;
    let (_, key) = app.device(&acct, "before").await;
    let enrol = |key: String| async move {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let id = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let mut msg = drawbridge_proto::api::ENROLL_CONTEXT.to_vec();
        msg.extend_from_slice(key.as_bytes());
        json!({
            "activation_key": key,
            "public_key": STANDARD.encode(id.public_key().as_ref()),
            "signature": STANDARD.encode(id.sign(&msg).as_ref()),
        })
    };
    let (s, v) = app
        .call(Method::POST, "/api/v1/enroll", None, Some(enrol(key).await))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(v["release_root"].is_null(), "{v}");
    let k = trusted(&app).await;
    let (_, key) = app.device(&acct, "after").await;
    let (s, v) = app
        .call(Method::POST, "/api/v1/enroll", None, Some(enrol(key).await))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["release_root"], json!(k.root.public().to_string()));
}
