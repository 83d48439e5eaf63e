//! Device enrolment: single use under concurrency, expiry, proof of the key,
//! identity from the server's record, fleet keys with approval.

use crate::common;

use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::TestApp;
use drawbridge_proto::api::{CERT_FETCH_CONTEXT, ENROLL_CONTEXT};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::{Value, json};

store_tests!(
    fifty_concurrent_enrolments_with_one_activation_key_yield_exactly_one_device,
    enrolment_needs_a_valid_unexpired_key_and_proof_of_the_identity_key,
    device_identity_comes_from_the_server_record_not_the_request,
    fleet_key_devices_wait_for_admin_approval_before_getting_a_certificate,
);

fn keypair() -> Ed25519KeyPair {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).unwrap();
    Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()
}

fn enroll_body(kp: &Ed25519KeyPair, field: &str, key: &str) -> Value {
    let mut msg = ENROLL_CONTEXT.to_vec();
    msg.extend_from_slice(key.as_bytes());
    json!({
        field: key,
        "public_key": STANDARD.encode(kp.public_key().as_ref()),
        "signature": STANDARD.encode(kp.sign(&msg).as_ref()),
    })
}

async fn enroll(app: &TestApp, body: Value) -> (StatusCode, Value) {
    app.call(Method::POST, "/api/v1/enroll", None, Some(body))
        .await
}

async fn fifty_concurrent_enrolments_with_one_activation_key_yield_exactly_one_device(
    app: TestApp,
) {
    let acct = app.account("acme").await;
    let (device, key) = app.device(&acct, "press-1").await;
    let app = std::sync::Arc::new(app);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let app = app.clone();
        let body = enroll_body(&keypair(), "activation_key", &key);
        tasks.push(tokio::spawn(async move { enroll(&app, body).await }));
    }
    let mut ok = Vec::new();
    for t in tasks {
        let (s, v) = t.await.unwrap();
        if s == StatusCode::OK {
            ok.push(v);
        } else {
            assert_eq!(s, StatusCode::UNAUTHORIZED, "{v}");
            assert_eq!(v["code"], "invalid_code");
        }
    }
    assert_eq!(ok.len(), 1, "exactly one enrolment wins");
    assert_eq!(ok[0]["device_id"], device);
    let (_, audit) = app
        .get("/api/v1/audit?action=device.enroll", &acct.admin)
        .await;
    let done = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["result"] == "ok");
    assert_eq!(done.count(), 1);
}

async fn enrolment_needs_a_valid_unexpired_key_and_proof_of_the_identity_key(app: TestApp) {
    let acct = app.account("acme").await;
    let (_, key) = app.device(&acct, "press-1").await;
    // Wrong key.
    let (s, _) = enroll(&app, enroll_body(&keypair(), "activation_key", "dba_wrong")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // Right key, but signed by a different identity key than the one presented.
    let mut body = enroll_body(&keypair(), "activation_key", &key);
    body["public_key"] = json!(STANDARD.encode(keypair().public_key().as_ref()));
    let (s, _) = enroll(&app, body).await;
    assert_eq!(
        s,
        StatusCode::UNAUTHORIZED,
        "proof of possession is checked"
    );
    // Malformed key material is a clear 400.
    let mut body = enroll_body(&keypair(), "activation_key", &key);
    body["public_key"] = json!("not base64!");
    let (s, v) = enroll(&app, body).await;
    assert_eq!(
        (s, v["code"].clone()),
        (StatusCode::BAD_REQUEST, json!("invalid"))
    );
    // None of that used the key up: it still works once.
    let (s, v) = enroll(&app, enroll_body(&keypair(), "activation_key", &key)).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert!(
        v["certificate"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    let (s, _) = enroll(&app, enroll_body(&keypair(), "activation_key", &key)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "single use");
    // An expired key is refused.
    let (_, key2) = app.device(&acct, "press-2").await;
    app.clock().advance(7 * 86_400 + 1);
    let (s, _) = enroll(&app, enroll_body(&keypair(), "activation_key", &key2)).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "expired");
}

async fn device_identity_comes_from_the_server_record_not_the_request(app: TestApp) {
    let acct = app.account("acme").await;
    let (device, key) = app.device(&acct, "press-1").await;
    let (other, _) = app.device(&acct, "press-2").await;
    let mut body = enroll_body(&keypair(), "activation_key", &key);
    // A device may not choose its id: unknown fields are refused outright.
    body["device_id"] = json!(other);
    let (s, _) = enroll(&app, body).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = enroll(&app, enroll_body(&keypair(), "activation_key", &key)).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["device_id"], device);
    assert_eq!(v["account_id"], acct.id);
    // The certificate names the device from the record, signed by the device CA.
    let pem = v["certificate"].as_str().unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(der.as_ref()).to_string();
    assert!(
        text.contains(&device),
        "certificate subject names the device id"
    );
    assert!(!text.contains(&other));
    let d = app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{device}"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(d["status"]["enrolled"], true);
    let d = app
        .ok(
            Method::GET,
            &format!("/api/v1/devices/{other}"),
            &acct.admin,
            None,
        )
        .await;
    assert_eq!(d["status"]["enrolled"], false);
}

async fn fleet_key_devices_wait_for_admin_approval_before_getting_a_certificate(app: TestApp) {
    let acct = app.account("acme").await;
    let v = app
        .ok(
            Method::POST,
            "/api/v1/fleet-keys",
            &acct.admin,
            Some(json!({"name": "line 3", "expires_in_days": 30})),
        )
        .await;
    let fleet = v["key"].as_str().unwrap().to_string();
    let fleet_id = v["info"]["id"].as_str().unwrap().to_string();
    let kp = keypair();
    let mut body = enroll_body(&kp, "fleet_key", &fleet);
    body["name"] = json!("edge-17");
    let (s, v) = enroll(&app, body).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], "pending_approval");
    assert!(v["certificate"].is_null());
    let device = v["device_id"].as_str().unwrap().to_string();
    let fetch = |ts: i64, kp: &Ed25519KeyPair| {
        let mut msg = CERT_FETCH_CONTEXT.to_vec();
        msg.extend_from_slice(device.as_bytes());
        msg.extend_from_slice(ts.to_string().as_bytes());
        json!({"device_id": device, "timestamp": ts, "signature": STANDARD.encode(kp.sign(&msg).as_ref())})
    };
    let now = app.state.now();
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/enroll/certificate",
            None,
            Some(fetch(now, &kp)),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "pending_approval");
    assert!(v["certificate"].is_null());
    let (s, _) = app
        .post(
            &format!("/api/v1/devices/{device}/approve"),
            &acct.admin,
            json!({}),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    let (s, v) = app
        .call(
            Method::POST,
            "/api/v1/enroll/certificate",
            None,
            Some(fetch(now, &kp)),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["status"], "enrolled");
    assert!(
        v["certificate"]
            .as_str()
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    // Someone else's key cannot fetch it; nor can an old signature.
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/enroll/certificate",
            None,
            Some(fetch(now, &keypair())),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = app
        .call(
            Method::POST,
            "/api/v1/enroll/certificate",
            None,
            Some(fetch(now - 3600, &kp)),
        )
        .await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    // A revoked fleet key enrols nothing.
    app.ok(
        Method::DELETE,
        &format!("/api/v1/fleet-keys/{fleet_id}"),
        &acct.admin,
        None,
    )
    .await;
    let mut body = enroll_body(&keypair(), "fleet_key", &fleet);
    body["name"] = json!("edge-18");
    let (s, _) = enroll(&app, body).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    assert_eq!(app.count("devices").await, 1);
}
