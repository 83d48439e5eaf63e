//! HTTPS device web services: machine LAN devices present self-signed
//! certificates, so the first certificate seen for a (device, target) is
//! trusted and pinned (SHA-256 of the leaf); another one is refused and kept
//! as pending until an admin accepts it. The TLS handshake itself is checked:
//! the device must hold the key of the certificate it presents.

use crate::auth::Caller;
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use axum::Json;
use axum::extract::{Path, State};
use drawbridge_proto::{Action, ApiError};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// SHA-256 of a certificate, hex with colons (as browsers show it).
pub fn fingerprint(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Accepts the presented certificate as it is (trust is decided by the pin
/// afterwards) but checks the handshake's signature with its key; remembers
/// the leaf's fingerprint.
#[derive(Debug)]
struct FirstUse {
    seen: Mutex<Option<String>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for FirstUse {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(fingerprint(end_entity));
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS to the device's web server over `stream` (ALPN `http/1.1`); answers
/// the stream and the fingerprint of the certificate it presented.
pub async fn handshake<S>(
    stream: S,
    ip: std::net::Ipv4Addr,
) -> std::io::Result<(tokio_rustls::client::TlsStream<S>, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    handshake_alpn(stream, ip, &[b"http/1.1"]).await
}

/// TLS to the device over `stream` offering the ALPN protocols `alpn` (none
/// for RDP); answers the stream and the fingerprint of the certificate it presented.
pub async fn handshake_alpn<S>(
    stream: S,
    ip: std::net::Ipv4Addr,
    alpn: &[&[u8]],
) -> std::io::Result<(tokio_rustls::client::TlsStream<S>, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(FirstUse {
        seen: Mutex::new(None),
        provider: provider.clone(),
    });
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(std::io::Error::other)?
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = ServerName::IpAddress(std::net::IpAddr::V4(ip).into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, stream)
        .await?;
    let seen = verifier
        .seen
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok((tls, seen.unwrap_or_default()))
}

/// Checks `seen` against the pin of (device, target): the first one is
/// pinned; the pinned one passes; another is refused and kept as pending.
pub async fn check(
    state: &AppState,
    caller: &Caller,
    device_id: &str,
    target: SocketAddrV4,
    seen: &str,
) -> AppResult<()> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let row = sqlx::query("SELECT sha256 FROM web_pins WHERE device_id = $1 AND target = $2")
        .bind(device_id)
        .bind(target.to_string())
        .fetch_optional(&mut *tx)
        .await?;
    let pinned: Option<String> = row.map(|r| r.try_get(0)).transpose()?;
    match pinned {
        Some(p) if p == seen => Ok(()),
        Some(p) => {
            sqlx::query("UPDATE web_pins SET pending_sha256 = $1, pending_at = $2 WHERE device_id = $3 AND target = $4")
                .bind(seen)
                .bind(now)
                .bind(device_id)
                .bind(target.to_string())
                .execute(&mut *tx)
                .await?;
            let ev = caller
                .event("web.certificate_changed", &format!("device:{device_id}"))
                .device(device_id)
                .result("denied")
                .details(serde_json::json!({"username": caller.username, "target": target.to_string(), "pinned": p, "seen": seen}));
            crate::audit::append(&mut tx, now, &ev).await?;
            tx.commit().await?;
            Err(AppError::conflict(format!(
                "the device's certificate at {target} changed (pinned {p}, now {seen}); an admin must accept the new one on the device's page"
            )))
        }
        None => {
            let inserted = sqlx::query(
                "INSERT INTO web_pins (device_id, target, sha256, pinned_at) VALUES ($1, $2, $3, $4)",
            )
            .bind(device_id)
            .bind(target.to_string())
            .bind(seen)
            .bind(now)
            .execute(&mut *tx)
            .await;
            if let Err(e) = inserted {
                // Pinned by another request at the same moment: decide against that one.
                if crate::db::is_unique_violation(&e) {
                    drop(tx);
                    return Box::pin(check(state, caller, device_id, target, seen)).await;
                }
                return Err(e.into());
            }
            let ev = caller
                .event("web.certificate_pinned", &format!("device:{device_id}"))
                .device(device_id)
                .details(serde_json::json!({"username": caller.username, "target": target.to_string(), "sha256": seen}));
            crate::audit::append(&mut tx, now, &ev).await?;
            tx.commit().await?;
            Ok(())
        }
    }
}

/// A pinned certificate of a device's HTTPS web service.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct WebPin {
    #[schema(value_type = String, example = "192.168.1.10:443")]
    pub target: SocketAddrV4,
    /// SHA-256 of the certificate trusted now.
    pub sha256: String,
    /// Another certificate the device presented since, refused until accepted.
    pub pending_sha256: Option<String>,
}

/// Accept the certificate a device's HTTPS web service presents now.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptPin {
    #[schema(value_type = String, example = "192.168.1.10:443")]
    pub target: SocketAddrV4,
    /// The pending fingerprint as shown (so an admin accepts what they checked).
    pub sha256: String,
}

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(list)).routes(routes!(accept))
}

async fn device_visible(state: &AppState, caller: &Caller, id: &str) -> AppResult<()> {
    let found: Option<String> =
        sqlx::query_scalar("SELECT id FROM devices WHERE id = $1 AND account_id = $2")
            .bind(id)
            .bind(&caller.account_id)
            .fetch_optional(&state.store.pool)
            .await?;
    found
        .map(|_| ())
        .ok_or_else(|| AppError::not_found("device"))
}

/// The pinned certificates of a device's HTTPS web services.
#[utoipa::path(get, path = "/api/v1/devices/{id}/web-pins", tag = "devices", params(("id" = String, Path)),
    responses((status = 200, body = Vec<WebPin>), (status = 404, body = ApiError)))]
async fn list(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> AppResult<Json<Vec<WebPin>>> {
    caller
        .require(&state, Action::ManageDevices, "device.web_pins")
        .await?;
    device_visible(&state, &caller, &id).await?;
    let rows = sqlx::query("SELECT target, sha256, pending_sha256 FROM web_pins WHERE device_id = $1 ORDER BY target LIMIT 256")
        .bind(&id)
        .fetch_all(&state.store.pool)
        .await?;
    let mut out = Vec::new();
    for r in rows {
        out.push(WebPin {
            target: r
                .try_get::<String, _>(0)?
                .parse()
                .map_err(|_| AppError::internal(anyhow::anyhow!("stored pin target")))?,
            sha256: r.try_get(1)?,
            pending_sha256: r.try_get(2)?,
        });
    }
    Ok(Json(out))
}

/// Trust the certificate a device's HTTPS web service presents now (admins).
#[utoipa::path(post, path = "/api/v1/devices/{id}/web-pins/accept", tag = "devices", params(("id" = String, Path)),
    request_body = AcceptPin,
    responses((status = 200, body = WebPin), (status = 404, body = ApiError), (status = 409, body = ApiError)))]
async fn accept(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    crate::extract::ApiJson(req): crate::extract::ApiJson<AcceptPin>,
) -> AppResult<Json<WebPin>> {
    caller
        .require(&state, Action::ManageDevices, "device.web_pins")
        .await?;
    device_visible(&state, &caller, &id).await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let changed = sqlx::query(
        "UPDATE web_pins SET sha256 = pending_sha256, pinned_at = $1, pending_sha256 = NULL, pending_at = NULL
         WHERE device_id = $2 AND target = $3 AND pending_sha256 = $4",
    )
    .bind(now)
    .bind(&id)
    .bind(req.target.to_string())
    .bind(&req.sha256)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if changed != 1 {
        return Err(AppError::conflict(
            "no such pending certificate for this target (it may have been accepted already)",
        ));
    }
    let ev = caller
        .event("web.certificate_accepted", &format!("device:{id}"))
        .device(&id)
        .details(serde_json::json!({"username": caller.username, "target": req.target.to_string(), "sha256": req.sha256}));
    crate::audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(Json(WebPin {
        target: req.target,
        sha256: req.sha256,
        pending_sha256: None,
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn fingerprints_read_like_a_browsers() {
        let f = super::fingerprint(b"abc");
        assert_eq!(f.len(), 32 * 3 - 1);
        assert!(f.starts_with("BA:78:16:BF"), "{f}");
    }
}
