//! The relay runs on the server's own TLS port and admits exactly the peers
//! holding a token signed with this control plane's key.

use drawbridge_relay::{Claims, SigningKey};
use drawbridge_server::clock::Clock;
use drawbridge_server::db::Store;
use drawbridge_server::state::AppState;
use std::sync::Arc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

fn token(key: &SigningKey, peer: u8, now: u64) -> String {
    drawbridge_relay::token::issue(
        key,
        &Claims {
            session_id: "s1".into(),
            peer: [peer; 32],
            allowed_peers: vec![[9; 32]],
            expires_at: now + 60,
            bridge: false,
        },
    )
    .unwrap()
}

#[tokio::test]
async fn the_server_port_serves_the_relay_with_tokens_from_its_own_key_only() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&format!("sqlite://{}", dir.path().join("db").display()))
        .await
        .unwrap();
    let state = AppState::new(store, Clock::default(), "https://127.0.0.1".into())
        .await
        .unwrap();
    let files = drawbridge_server::pki::ensure_self_signed(dir.path(), &[]).unwrap();
    let tls = Arc::new(drawbridge_server::pki::server_config(&files.cert, &files.key).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = drawbridge_server::app(state.clone());
    let server = tokio::spawn(drawbridge_server::serve::serve_tls(
        listener,
        tls,
        app,
        std::future::pending(),
    ));

    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&files.ca_cert).unwrap();
    for c in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connect = |tok: String| {
        let client = client.clone();
        async move {
            let mut req = format!("wss://127.0.0.1:{}/relay/v1", addr.port())
                .into_client_request()
                .unwrap();
            req.headers_mut()
                .insert("authorization", format!("Bearer {tok}").parse().unwrap());
            tokio_tungstenite::connect_async_tls_with_config(
                req,
                None,
                false,
                Some(tokio_tungstenite::Connector::Rustls(Arc::new(client))),
            )
            .await
        }
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let ok = connect(token(&state.relay_key, 1, now)).await;
    assert!(
        ok.is_ok(),
        "a token from the server's key is admitted: {:?}",
        ok.err()
    );
    let (foreign, _) = SigningKey::generate().unwrap();
    assert!(
        connect(token(&foreign, 2, now)).await.is_err(),
        "a token from another key is refused"
    );
    assert!(connect("drt1.garbage.sig".into()).await.is_err());
    server.abort();
}
