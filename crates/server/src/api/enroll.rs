//! Device enrolment: an edge proves it holds a one-time activation key (or the
//! account's fleet key) and its own Ed25519 identity key, and receives a
//! certificate binding the device id from the server's record to that key.

use crate::audit::{self, Event};
use crate::error::{AppError, AppResult};
use crate::extract::ApiJson;
use crate::extract::Source;
use crate::pki::decode_key;
use crate::secret;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use drawbridge_proto::api::{
    CERT_FETCH_CONTEXT, CertificateFetch, ENROLL_CONTEXT, EnrollRequest, EnrollResponse,
    EnrollStatus,
};
use drawbridge_proto::{ApiError, ErrorCode};
use ring::signature::{ED25519, UnparsedPublicKey};
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(enroll))
        .routes(routes!(fetch_certificate))
        .routes(routes!(trust))
}

fn verify_sig(key: &[u8; 32], msg: &[u8], sig_b64: &str) -> bool {
    if sig_b64.len() > 128 {
        return false;
    }
    let Ok(sig) = STANDARD.decode(sig_b64) else {
        return false;
    };
    UnparsedPublicKey::new(&ED25519, key)
        .verify(msg, &sig)
        .is_ok()
}

/// The release root in force, for the edge to pin (issue 17).
async fn release_root(state: &AppState) -> AppResult<Option<String>> {
    Ok(crate::updates::store::roots(&state.store)
        .await?
        .map(|r| r.current.to_string()))
}

fn refused() -> AppError {
    AppError::new(
        ErrorCode::InvalidCode,
        "enrolment refused: the key is wrong, expired or already used, or the signature does not match",
    )
}

/// Records a refused enrolment in the account the key belongs to (coalesced: see
/// [`audit::ENROLL_REFUSAL_WINDOW`]), then returns the refusal. A key the server does not
/// know belongs to no account: nothing is audited (only a server log line), so
/// strangers guessing keys cannot write to any account's log; the per-address
/// limit bounds their attempts.
async fn refuse(state: &AppState, source: &str, now: i64, key: &str, fleet: bool) -> AppError {
    if let Err(e) = audit_refusal(state, source, now, key, fleet).await {
        tracing::warn!(error = %e, "recording a refused enrolment failed");
    }
    refused()
}

async fn audit_refusal(
    state: &AppState,
    source: &str,
    now: i64,
    key: &str,
    fleet: bool,
) -> Result<(), sqlx::Error> {
    let hash = secret::token_hash(key);
    let (account_id, device_id, why) = if fleet {
        let row = sqlx::query(
            "SELECT account_id, revoked, expires_at FROM fleet_keys WHERE key_hash = $1",
        )
        .bind(&hash)
        .fetch_optional(&state.store.pool)
        .await?;
        let Some(row) = row else {
            tracing::info!(%source, "enrolment refused: unknown fleet key");
            return Ok(());
        };
        let why = if row.try_get::<i64, _>(1)? != 0 {
            "revoked"
        } else if row.try_get::<i64, _>(2)? <= now {
            "expired"
        } else {
            "signature"
        };
        (row.try_get::<String, _>(0)?, None, why)
    } else {
        let row = sqlx::query("SELECT account_id, device_id, used_at, expires_at FROM activation_keys WHERE key_hash = $1")
            .bind(&hash)
            .fetch_optional(&state.store.pool)
            .await?;
        let Some(row) = row else {
            tracing::info!(%source, "enrolment refused: unknown activation key");
            return Ok(());
        };
        let why = if row.try_get::<Option<i64>, _>(2)?.is_some() {
            "used"
        } else if row.try_get::<i64, _>(3)? <= now {
            "expired"
        } else {
            "signature"
        };
        (
            row.try_get::<String, _>(0)?,
            Some(row.try_get::<String, _>(1)?),
            why,
        )
    };
    let (action, object) = match &device_id {
        Some(d) => ("device.enroll", format!("device:{d}")),
        None => ("device.register", "fleet_key".to_string()),
    };
    let mut ev = Event::new(&account_id, "anonymous", action, &object)
        .result("denied")
        .source(source)
        .details(serde_json::json!({
            "reason": why,
            "method": if fleet { "fleet_key" } else { "activation_key" },
            "coalesced_secs": audit::ENROLL_REFUSAL_WINDOW,
        }));
    if let Some(d) = &device_id {
        ev = ev.device(d);
    }
    let mut tx = state.store.begin().await?;
    audit::append_coalesced(&mut tx, now, &ev, audit::ENROLL_REFUSAL_WINDOW).await?;
    tx.commit().await
}

/// Enrol a device with its activation key (or self-register with the fleet key).
#[utoipa::path(post, path = "/api/v1/enroll", tag = "enrolment", security(()), request_body = EnrollRequest,
    responses((status = 200, body = EnrollResponse), (status = 400, body = ApiError), (status = 401, body = ApiError)))]
async fn enroll(
    State(state): State<AppState>,
    Source(source): Source,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> AppResult<Json<EnrollResponse>> {
    state.attempt(&source)?;
    let public = decode_key(&req.public_key)?;
    let (secret_key, fleet) = match (&req.activation_key, &req.fleet_key) {
        (Some(k), None) => (k.as_str(), false),
        (None, Some(k)) => (k.as_str(), true),
        _ => {
            return Err(AppError::invalid(
                "send exactly one of activation_key and fleet_key",
            ));
        }
    };
    if secret_key.len() > 128 {
        return Err(refused());
    }
    let now = state.now();
    let mut msg = ENROLL_CONTEXT.to_vec();
    msg.extend_from_slice(secret_key.as_bytes());
    if !verify_sig(&public, &msg, &req.signature) {
        return Err(refuse(&state, &source, now, secret_key, fleet).await);
    }
    let hash = secret::token_hash(secret_key);
    if fleet {
        return enroll_fleet(&state, &req, &hash, &source, now)
            .await
            .map(Json);
    }
    let mut tx = state.store.begin().await?;
    // The conditional UPDATE is the single-use guarantee: of any number of
    // concurrent enrolments with one key, exactly one changes the row.
    let claimed = sqlx::query(
        "UPDATE activation_keys SET used_at = $1 WHERE key_hash = $2 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(&hash)
    .execute(&mut *tx)
    .await?;
    if claimed.rows_affected() != 1 {
        drop(tx);
        return Err(refuse(&state, &source, now, secret_key, false).await);
    }
    let row = sqlx::query("SELECT account_id, device_id FROM activation_keys WHERE key_hash = $1")
        .bind(&hash)
        .fetch_one(&mut *tx)
        .await?;
    let account_id: String = row.try_get(0)?;
    let device_id: String = row.try_get(1)?;
    let cert = state.device_ca.issue(&device_id, &account_id, public)?;
    // A key from `replace` for a device that has an identity key: the new one takes over.
    let old_key: Option<String> =
        sqlx::query_scalar("SELECT public_key FROM devices WHERE id = $1")
            .bind(&device_id)
            .fetch_one(&mut *tx)
            .await?;
    let replaced = old_key.is_some_and(|k| k != req.public_key);
    let r = sqlx::query(
        "UPDATE devices SET public_key = $1, certificate = $2, enrolled = $3, pending_approval = $4 WHERE id = $5 AND account_id = $6",
    )
    .bind(&req.public_key)
    .bind(&cert)
    .bind(1i64)
    .bind(0i64)
    .bind(&device_id)
    .bind(&account_id)
    .execute(&mut *tx)
    .await;
    if let Err(e) = r {
        return Err(if crate::db::is_unique_violation(&e) {
            AppError::conflict("this identity key is already enrolled as another device")
        } else {
            e.into()
        });
    }
    let ev = Event::new(
        &account_id,
        &format!("device:{device_id}"),
        "device.enroll",
        &format!("device:{device_id}"),
    )
    .source(&source)
    .device(&device_id)
    .details(serde_json::json!({ "public_key": req.public_key, "method": "activation_key", "replaced": replaced }));
    audit::append(&mut tx, now, &ev).await?;
    let ended = if replaced {
        super::devices::replaced_on_enrolment(&mut tx, &account_id, &device_id, now).await?
    } else {
        Vec::new()
    };
    tx.commit().await?;
    if replaced {
        // The old identity key's live channel closes, wherever it is connected.
        super::devices::after_commit(&state, &device_id, &ended).await?;
    }
    Ok(Json(EnrollResponse {
        device_id,
        account_id,
        status: EnrollStatus::Enrolled,
        certificate: Some(cert),
        ca_certificate: Some(state.device_ca.ca_pem().to_string()),
        release_root: release_root(&state).await?,
    }))
}

async fn enroll_fleet(
    state: &AppState,
    req: &EnrollRequest,
    hash: &str,
    source: &str,
    now: i64,
) -> AppResult<EnrollResponse> {
    let name = req
        .name
        .clone()
        .ok_or_else(|| AppError::invalid("fleet enrolment needs a device name"))?;
    let mut tx = state.store.begin().await?;
    let account_id: Option<String> = sqlx::query_scalar(
        "SELECT account_id FROM fleet_keys WHERE key_hash = $1 AND revoked = $2 AND expires_at > $3",
    )
    .bind(hash)
    .bind(0i64)
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(account_id) = account_id else {
        drop(tx);
        let key = req.fleet_key.as_deref().unwrap_or_default();
        return Err(refuse(state, source, now, key, true).await);
    };
    let device_id = secret::new_id();
    let r = sqlx::query(
        "INSERT INTO devices (id, account_id, name, serial, lan_subnets, nat, firewall, public_key, pending_approval, created_at)
         VALUES ($1, $2, $3, $4, '[]', '[]', '[]', $5, $6, $7)",
    )
    .bind(&device_id)
    .bind(&account_id)
    .bind(name.as_str())
    .bind(req.serial.as_ref().map(|s| s.as_str().to_string()))
    .bind(&req.public_key)
    .bind(1i64)
    .bind(now)
    .execute(&mut *tx)
    .await;
    if let Err(e) = r {
        return Err(if crate::db::is_unique_violation(&e) {
            AppError::conflict("a device with this name or identity key exists")
        } else {
            e.into()
        });
    }
    let ev = Event::new(&account_id, &format!("device:{device_id}"), "device.register", &format!("device:{device_id}"))
        .source(source)
        .device(&device_id)
        .details(serde_json::json!({ "name": name.as_str(), "public_key": req.public_key, "method": "fleet_key" }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(EnrollResponse {
        device_id,
        account_id,
        status: EnrollStatus::PendingApproval,
        certificate: None,
        ca_certificate: None,
        release_root: None,
    })
}

/// A device fetches its certificate (after fleet approval), proving it holds its key.
#[utoipa::path(post, path = "/api/v1/enroll/certificate", tag = "enrolment", security(()), request_body = CertificateFetch,
    responses((status = 200, body = EnrollResponse), (status = 401, body = ApiError)))]
async fn fetch_certificate(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<CertificateFetch>,
) -> AppResult<Json<EnrollResponse>> {
    let now = state.now();
    if (now - req.timestamp).abs() > 300 || req.device_id.len() > 64 {
        return Err(refused());
    }
    let row = sqlx::query(
        "SELECT account_id, public_key, certificate, pending_approval FROM devices WHERE id = $1",
    )
    .bind(&req.device_id)
    .fetch_optional(&state.store.pool)
    .await?
    .ok_or_else(refused)?;
    let key: Option<String> = row.try_get(1)?;
    let key = decode_key(&key.ok_or_else(refused)?)?;
    let mut msg = CERT_FETCH_CONTEXT.to_vec();
    msg.extend_from_slice(req.device_id.as_bytes());
    msg.extend_from_slice(req.timestamp.to_string().as_bytes());
    if !verify_sig(&key, &msg, &req.signature) {
        return Err(refused());
    }
    let pending = row.try_get::<i64, _>(3)? != 0;
    let cert: Option<String> = row.try_get(2)?;
    Ok(Json(EnrollResponse {
        device_id: req.device_id,
        account_id: row.try_get(0)?,
        status: if pending {
            EnrollStatus::PendingApproval
        } else {
            EnrollStatus::Enrolled
        },
        ca_certificate: cert.as_ref().map(|_| state.device_ca.ca_pem().to_string()),
        release_root: if cert.is_some() {
            release_root(&state).await?
        } else {
            None
        },
        certificate: cert,
    }))
}

/// What an edge must trust to reach this server (for enrolment files): the
/// CA of its self-signed certificate, if it runs on one. Any signed-in user;
/// the certificate is public.
#[utoipa::path(get, path = "/api/v1/server/trust", tag = "enrolment",
    responses((status = 200, body = drawbridge_proto::api::ServerTrust), (status = 401, body = ApiError)))]
async fn trust(
    State(state): State<AppState>,
    _caller: crate::auth::Caller,
) -> AppResult<Json<drawbridge_proto::api::ServerTrust>> {
    let pem = state.tls_ca.read().ok().and_then(|t| t.clone());
    let sha = pem.as_deref().and_then(|p| {
        let der = rustls_pemfile::certs(&mut p.as_bytes()).next()?.ok()?;
        Some(hex::encode(ring::digest::digest(
            &ring::digest::SHA256,
            &der,
        )))
    });
    Ok(Json(drawbridge_proto::api::ServerTrust {
        server: state.public_url.clone(),
        ca_certificate: pem,
        ca_sha256: sha,
    }))
}
