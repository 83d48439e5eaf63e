//! The live-channel harness shared by the tests that drive edges and clients
//! over real TLS WebSockets: the app served on a loopback port, enrolled
//! devices with their identity keys, an authenticated edge channel, a running
//! session with a joined client channel.
#![allow(dead_code)]

pub mod data;

use crate::common::{self, TestApp};
use axum::http::{Method, StatusCode};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use drawbridge_proto::api::ENROLL_CONTEXT;
use drawbridge_proto::channel::{
    EDGE_AUTH_CONTEXT, EdgeStatus, EdgeToServer, ServerToClient, ServerToEdge,
};
use futures_util::{SinkExt, StreamExt};
use ring::rand::SystemRandom;
use ring::signature::{Ed25519KeyPair, KeyPair};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The test app served over TLS on a loopback port.
pub struct Live {
    pub app: TestApp,
    pub port: u16,
    pub tls: Arc<rustls::ClientConfig>,
    /// The server's CA certificate (PEM), as `--ca-file` hands it to a standalone relay.
    pub ca_pem: Vec<u8>,
    server: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

impl Drop for Live {
    fn drop(&mut self) {
        self.server.abort();
    }
}

pub async fn live(app: TestApp) -> Live {
    let dir = tempfile::tempdir().unwrap();
    let files = drawbridge_server::pki::ensure_self_signed(dir.path(), &[]).unwrap();
    let cfg = Arc::new(drawbridge_server::pki::server_config(&files.cert, &files.key).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(drawbridge_server::serve::serve_tls(
        listener,
        cfg,
        app.app.clone(),
        std::future::pending(),
    ));
    let ca_pem = std::fs::read(&files.ca_cert).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut ca_pem.as_slice()) {
        roots.add(c.unwrap()).unwrap();
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    Live {
        app,
        port,
        tls: Arc::new(tls),
        ca_pem,
        server,
        _dir: dir,
    }
}

impl Live {
    pub async fn ws(
        &self,
        path: &str,
        token: Option<&str>,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let mut req = format!("wss://127.0.0.1:{}{path}", self.port)
            .into_client_request()
            .unwrap();
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let connector = tokio_tungstenite::Connector::Rustls(self.tls.clone());
        tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
            .await
            .map(|(ws, _)| ws)
    }

    /// Opens a connection to this server's relay with `token`: Ok, or the refusal's HTTP status.
    pub async fn relay(&self, token: &str) -> Result<Ws, u16> {
        self.relay_at(&format!("wss://127.0.0.1:{}/relay/v1", self.port), token)
            .await
    }

    /// Opens a relay connection at `url` (`wss://` trusting this server's CA, or `ws://`)
    /// with `token`: Ok, or the refusal's HTTP status.
    pub async fn relay_at(&self, url: &str, token: &str) -> Result<Ws, u16> {
        let mut req = url.into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        let connector = tokio_tungstenite::Connector::Rustls(self.tls.clone());
        match tokio_tungstenite::connect_async_tls_with_config(req, None, false, Some(connector))
            .await
        {
            Ok((ws, _)) => Ok(ws),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
            Err(e) => panic!("relay connect: {e}"),
        }
    }
}

/// Whether the connection closes within 5 s (messages before the close are skipped).
pub async fn closed(ws: &mut Ws) -> bool {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return true,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// The edge announces session key `wg_key(n)`; returns the edge's relay token for the session.
pub async fn edge_relay_token(ws: &mut Ws, session: &str, n: u8) -> String {
    send(
        ws,
        &EdgeToServer::SessionKey {
            session_id: session.to_string(),
            public_key: wg_key(n),
        },
    )
    .await;
    let m = until(ws, |m: &ServerToEdge| {
        sessions_of(m).is_some_and(|x| {
            x.iter()
                .any(|s| s.session_id == session && s.relay_token.is_some())
        })
    })
    .await;
    sessions_of(&m)
        .unwrap()
        .iter()
        .find(|s| s.session_id == session)
        .and_then(|s| s.relay_token.clone())
        .unwrap()
}

pub async fn recv<T: serde::de::DeserializeOwned>(ws: &mut Ws) -> Option<T> {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .ok()??
            .ok()?;
        match m {
            Message::Text(t) => {
                return Some(serde_json::from_str(&t).expect("server message parses"));
            }
            Message::Ping(_) | Message::Pong(_) => continue,
            _ => return None,
        }
    }
}

/// Waits (at most 5 s) for a message the predicate accepts, skipping others.
pub async fn until<T: serde::de::DeserializeOwned + std::fmt::Debug>(
    ws: &mut Ws,
    mut want: impl FnMut(&T) -> bool,
) -> T {
    loop {
        let m: T = recv(ws).await.expect("message within 5 s");
        if want(&m) {
            return m;
        }
    }
}

pub async fn send<T: serde::Serialize>(ws: &mut Ws, m: &T) {
    ws.send(Message::Text(serde_json::to_string(m).unwrap().into()))
        .await
        .unwrap();
}

/// An enrolled device with its identity key.
pub struct Device {
    pub id: String,
    pub key: Ed25519KeyPair,
}

pub async fn enrolled(l: &Live, acct: &common::Account, name: &str) -> Device {
    let (id, activation) = l.app.device(acct, name).await;
    l.app.edge_state(&id, false, false).await;
    let key = Ed25519KeyPair::from_pkcs8(
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .unwrap()
            .as_ref(),
    )
    .unwrap();
    let mut msg = ENROLL_CONTEXT.to_vec();
    msg.extend_from_slice(activation.as_bytes());
    let body = json!({
        "activation_key": activation,
        "public_key": STANDARD.encode(key.public_key().as_ref()),
        "signature": STANDARD.encode(key.sign(&msg).as_ref()),
    });
    let (s, v) = l
        .app
        .call(Method::POST, "/api/v1/enroll", None, Some(body))
        .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    Device { id, key }
}

/// Connects and authenticates an edge; returns the channel after `welcome` and the first `sessions`.
pub async fn edge(l: &Live, d: &Device, switch_on: bool) -> Ws {
    let mut ws = l.ws("/api/v1/edge/channel", None).await.unwrap();
    let ServerToEdge::Challenge { nonce } = recv(&mut ws).await.unwrap() else {
        panic!("challenge first")
    };
    let mut msg = EDGE_AUTH_CONTEXT.to_vec();
    msg.extend_from_slice(nonce.as_bytes());
    msg.extend_from_slice(d.id.as_bytes());
    send(
        &mut ws,
        &EdgeToServer::Auth {
            device_id: d.id.clone(),
            signature: STANDARD.encode(d.key.sign(&msg).as_ref()),
        },
    )
    .await;
    assert!(matches!(
        recv(&mut ws).await,
        Some(ServerToEdge::Welcome { .. })
    ));
    assert!(matches!(
        recv(&mut ws).await,
        Some(ServerToEdge::Sessions { .. })
    ));
    send(
        &mut ws,
        &EdgeToServer::Status(EdgeStatus {
            switch_on,
            agent_version: "test".into(),
            endpoints: vec![],
            relay_rtt: vec![],
        }),
    )
    .await;
    // The status is processed in order; wait until the server has it.
    for _ in 0..100 {
        let on: i64 = sqlx::query_scalar("SELECT switch_on FROM devices WHERE id = $1")
            .bind(&d.id)
            .fetch_one(&l.app.state.store.pool)
            .await
            .unwrap();
        if (on != 0) == switch_on {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ws
}

/// A client key as it goes into the channel's query string.
pub fn key_query(n: u8) -> String {
    url::form_urlencoded::byte_serialize(wg_key(n).to_string().as_bytes()).collect()
}

pub fn wg_key(n: u8) -> drawbridge_proto::WgKey {
    drawbridge_proto::WgKey::from_bytes([n; 32])
}

pub fn sessions_of(m: &ServerToEdge) -> Option<&Vec<drawbridge_proto::channel::EdgeSession>> {
    match m {
        ServerToEdge::Sessions { sessions, .. } => Some(sessions),
        _ => None,
    }
}

/// An active session on device `d` with admin joined as client key `n`; returns (session, client channel).
pub async fn running(l: &Live, acct: &common::Account, d: &Device, n: u8) -> (String, Ws) {
    let s = l.app.session(&acct.admin, &d.id, &[&acct.admin_id]).await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/start"),
            &acct.admin,
            None,
        )
        .await;
    l.app
        .ok(
            Method::POST,
            &format!("/api/v1/sessions/{s}/join"),
            &acct.admin,
            Some(json!({"public_key": wg_key(n)})),
        )
        .await;
    let key = key_query(n);
    let mut c = l
        .ws(
            &format!("/api/v1/sessions/{s}/channel?key={key}"),
            Some(&acct.admin),
        )
        .await
        .unwrap();
    assert!(matches!(
        recv::<ServerToClient>(&mut c).await,
        Some(ServerToClient::Update(_))
    ));
    (s, c)
}
