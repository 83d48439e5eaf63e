//! An HTTPS device web service (self-signed, as on a machine LAN) through
//! browser access, with the real binaries: the first certificate is trusted and
//! pinned; when the device presents another, requests are refused and the new
//! one waits for an admin, whose acceptance lets them through again.

use crate::common;

use common::*;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Config = Arc<RwLock<Arc<rustls::ServerConfig>>>;

fn tls_config() -> (Arc<rustls::ServerConfig>, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let der = cert.der().clone();
    let fp = ring::digest::digest(&ring::digest::SHA256, der.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":");
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![der],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    (Arc::new(cfg), fp)
}

/// An HTTPS "HMI" answering every request with one small page; its
/// certificate is whatever `config` holds when a connection comes in.
fn https_hmi(rt: &tokio::runtime::Runtime, config: Config) -> SocketAddr {
    let l = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = l.local_addr().unwrap();
    rt.spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let cfg = config.read().unwrap().clone();
            tokio::spawn(async move {
                let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "<h1>HTTPS HMI</h1>";
                let _ = tls
                    .write_all(format!("HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
                    .await;
                let _ = tls.shutdown().await;
            });
        }
    });
    addr
}

#[test]
fn an_https_device_is_trusted_on_first_use_and_a_new_certificate_waits_for_an_admin() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (server, api, device, state) = setup(dir.path());
    let (first, fp1) = tls_config();
    let (second, fp2) = tls_config();
    let config: Config = Arc::new(RwLock::new(first));
    let hmi = https_hmi(&rt, config.clone());
    let (sid, _agent) = lan_session(
        &api,
        &device,
        &state,
        &[hmi.port()],
        json!([{"target": hmi.to_string(), "scheme": "https", "path": "/start"}]),
    );
    // A web service must name a released port.
    let (code, v) = api.call(
        reqwest::Method::PATCH,
        &format!("/devices/{device}"),
        Some(json!({"web_services": [{"target": "127.0.0.1:1", "scheme": "http"}]})),
    );
    assert_eq!(code, 400, "{v}");
    let (code, v) = api.post(
        &format!("/sessions/{sid}/web"),
        json!({"device_id": device, "target": hmi.to_string()}),
    );
    assert_eq!(code, 200, "{v}");
    let entry = v["url"].as_str().unwrap().to_string();
    let origin = v["origin"].as_str().unwrap().to_string();
    let b = web_browser(&server, &origin_host(&origin));
    let r = b.get(&entry).send().unwrap();
    assert_eq!(r.status(), 303);
    assert_eq!(
        r.headers()["location"],
        "/start",
        "the browser starts at the web service's path"
    );
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let get = || {
        b.get(format!("{origin}/start"))
            .header("cookie", &cookie)
            .send()
            .unwrap()
    };

    // First use: trusted, and the certificate is pinned.
    let r = get();
    assert_eq!(r.status(), 200, "{:?}", r.text());
    assert!(r.text().unwrap().contains("HTTPS HMI"));
    let pins = api.get(&format!("/devices/{device}/web-pins"));
    assert_eq!(pins[0]["sha256"], fp1, "{pins}");
    assert!(pins[0]["pending_sha256"].is_null());

    // The device presents another certificate: refused, kept for an admin.
    *config.write().unwrap() = second;
    let r = get();
    assert_eq!(r.status(), 502);
    assert!(
        r.text().unwrap().contains("certificate"),
        "the refusal says why"
    );
    let pins = api.get(&format!("/devices/{device}/web-pins"));
    assert_eq!(pins[0]["sha256"], fp1);
    assert_eq!(pins[0]["pending_sha256"], fp2, "{pins}");
    let audit = api.get("/audit?action=web.certificate_changed");
    assert!(audit.to_string().contains(&fp2), "{audit}");
    // Accepting needs the fingerprint the admin checked.
    let wrong: Value = json!({"target": hmi.to_string(), "sha256": fp1});
    assert_eq!(
        api.post(&format!("/devices/{device}/web-pins/accept"), wrong)
            .0,
        409
    );
    let (code, v) = api.post(
        &format!("/devices/{device}/web-pins/accept"),
        json!({"target": hmi.to_string(), "sha256": fp2}),
    );
    assert_eq!(code, 200, "{v}");
    let r = get();
    assert_eq!(r.status(), 200);
    assert!(r.text().unwrap().contains("HTTPS HMI"));

    // The site switch goes off: the session ends and the origin stops answering within 5 s.
    let off = std::time::Instant::now();
    edge(&state, &["switch", "off"]);
    while get().status() == 200 {
        assert!(
            off.elapsed() < std::time::Duration::from_secs(5),
            "the origin still answers after the site switch went off"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(
        api.get(&format!("/sessions/{sid}"))["end_reason"],
        "site_switch"
    );
}
