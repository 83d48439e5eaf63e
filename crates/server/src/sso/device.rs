//! `drawbridge login --sso`: the device authorization grant (RFC 8628). The
//! server holds the client (and secret) and talks to the provider; the CLI
//! only starts the flow, shows the user the provider's page and code, and
//! polls with a secret poll token until it gets an ordinary Drawbridge login.
//! One call to the provider per flow and second at most, however often the
//! CLI polls; the flow row is spent when the provider answers with tokens.

use super::login::{
    FlowSecrets, active_provider, begin, clip, consume, discover_or_refuse, flow_context,
    flow_from, refuse, verify, why_no_flow,
};
use super::{Provider, oidc};
use crate::error::{AppError, AppResult};
use crate::extract::{ApiJson, Source};
use crate::secret;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use drawbridge_proto::ApiError;
use drawbridge_proto::api::LoginResponse;
use drawbridge_proto::sso::{
    SsoDevicePending, SsoDevicePollRequest, SsoDeviceStartRequest, SsoDeviceStartResponse,
};
use openidconnect::OAuth2TokenResponse;
use serde::Deserialize;
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Longest a device code is kept, whatever the provider says.
const MAX_DEVICE_SECS: i64 = 15 * 60;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(device_start)).routes(routes!(device_poll))
}

/// Begin a CLI login with the device authorization grant: show the user the
/// provider's page and code, then poll `/sso/device/poll`.
#[utoipa::path(post, path = "/api/v1/sso/device/start", tag = "sso", security(()), request_body = SsoDeviceStartRequest,
    responses((status = 200, body = SsoDeviceStartResponse), (status = 401, body = ApiError), (status = 429, body = ApiError)))]
async fn device_start(
    State(state): State<AppState>,
    Source(source): Source,
    ApiJson(req): ApiJson<SsoDeviceStartRequest>,
) -> AppResult<Json<SsoDeviceStartResponse>> {
    let (now, p, meta) = begin(&state, &source, &req.account).await?;
    let acct = Some(p.account_id.as_str());
    let Some(endpoint) = meta
        .additional_metadata()
        .device_authorization_endpoint
        .clone()
    else {
        return Err(refuse(
            &state,
            acct,
            None,
            "no_device_grant",
            serde_json::json!({"issuer": p.issuer}),
            &source,
        )
        .await);
    };
    let (client_id, secret) = device_client(&p);
    let mut scope = String::from("openid");
    for s in &p.scopes {
        scope.push(' ');
        scope.push_str(s);
    }
    let req = client_auth(
        oidc::http().post(endpoint.as_str()),
        &client_id,
        secret.as_deref(),
    )
    .form(&form(&client_id, secret.is_some(), &[("scope", &scope)]));
    let answer = match req.send().await {
        Ok(r) if r.status().is_success() => r.json::<DeviceAuthorization>().await.ok(),
        Ok(r) => {
            let status = r.status();
            let err = r.json::<OAuthError>().await.ok();
            return Err(refuse(
                &state,
                acct,
                None,
                "device_start_failed",
                serde_json::json!({"status": status.as_u16(), "error": err.map(|e| clip(&e.error, 64))}),
                &source,
            )
            .await);
        }
        Err(e) => {
            return Err(refuse(
                &state,
                acct,
                None,
                "device_start_failed",
                serde_json::json!({"detail": clip(&oidc::chain(&e), 300)}),
                &source,
            )
            .await);
        }
    };
    let Some(d) = answer.filter(|d| {
        d.device_code.len() <= 4096 && d.user_code.len() <= 64 && d.verification_uri.len() <= 2048
    }) else {
        return Err(refuse(
            &state,
            acct,
            None,
            "device_start_failed",
            serde_json::json!({"detail": "the provider's answer does not parse"}),
            &source,
        )
        .await);
    };
    let id = secret::new_id();
    let poll_token = secret::new_token("dbp_");
    let secrets = FlowSecrets {
        device_code: Some(d.device_code.clone()),
        ..Default::default()
    };
    let sealed = state.store.seal(
        &flow_context(&id),
        &serde_json::to_string(&secrets).map_err(AppError::internal)?,
    );
    let interval = d.interval.unwrap_or(5).clamp(1, 60);
    let expires_at = now + d.expires_in.unwrap_or(600).clamp(60, MAX_DEVICE_SECS);
    sqlx::query(
        "INSERT INTO sso_flows (id, account_id, kind, state_hash, secrets, issuer, client_id, interval_secs, source, created_at, expires_at)
         VALUES ($1, $2, 'device', $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(&p.account_id)
    .bind(secret::token_hash(&poll_token))
    .bind(&sealed)
    .bind(&p.issuer)
    .bind(&client_id)
    .bind(interval)
    .bind(&source)
    .bind(now)
    .bind(expires_at)
    .execute(&state.store.pool)
    .await?;
    Ok(Json(SsoDeviceStartResponse {
        poll_token,
        user_code: clip(&d.user_code, 64),
        verification_uri: d.verification_uri,
        verification_uri_complete: d.verification_uri_complete.filter(|u| u.len() <= 2048),
        interval: u32::try_from(interval).unwrap_or(5),
        expires_at: crate::clock::from_unix(expires_at),
    }))
}

#[derive(Deserialize)]
struct DeviceAuthorization {
    device_code: String,
    user_code: String,
    verification_uri: String,
    #[serde(default)]
    verification_uri_complete: Option<String>,
    #[serde(default)]
    expires_in: Option<i64>,
    #[serde(default)]
    interval: Option<i64>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// The client the CLI's device grant uses: the public CLI client when set
/// (no secret), else the confidential client.
fn device_client(p: &Provider) -> (String, Option<String>) {
    match &p.cli_client_id {
        Some(c) => (c.clone(), None),
        None => (p.client_id.clone(), Some(p.client_secret.clone())),
    }
}

/// RFC 6749 §2.3.1: HTTP Basic with the form-encoded id and secret.
fn client_auth(
    req: reqwest::RequestBuilder,
    client_id: &str,
    secret: Option<&str>,
) -> reqwest::RequestBuilder {
    match secret {
        Some(s) => {
            let enc =
                |v: &str| url::form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
            req.basic_auth(enc(client_id), Some(enc(s)))
        }
        None => req,
    }
}

/// The form fields, with `client_id` for a public client.
fn form<'a>(
    client_id: &'a str,
    confidential: bool,
    fields: &[(&'a str, &'a str)],
) -> Vec<(&'a str, &'a str)> {
    let mut f = fields.to_vec();
    if !confidential {
        f.push(("client_id", client_id));
    }
    f
}

/// Poll a CLI login: `202` while the user has not approved at the provider,
/// then the login (once; the poll token is spent).
#[utoipa::path(post, path = "/api/v1/sso/device/poll", tag = "sso", security(()), request_body = SsoDevicePollRequest,
    responses((status = 200, body = LoginResponse), (status = 202, body = SsoDevicePending), (status = 401, body = ApiError), (status = 429, body = ApiError)))]
async fn device_poll(
    State(state): State<AppState>,
    Source(source): Source,
    ApiJson(req): ApiJson<SsoDevicePollRequest>,
) -> AppResult<Response> {
    state.attempt(&source)?;
    if req.poll_token.is_empty() || req.poll_token.len() > 128 {
        return Err(AppError::bad_request("poll_token: 1 to 128 characters"));
    }
    let now = state.now();
    let hash = secret::token_hash(&req.poll_token);
    // At most one call to the provider per flow and second: whoever moves
    // next_poll_at polls, the others hear "pending".
    let row = sqlx::query(
        "UPDATE sso_flows SET next_poll_at = $1 + 1
         WHERE state_hash = $2 AND kind = 'device' AND consumed_at IS NULL AND expires_at > $1 AND next_poll_at <= $1
         RETURNING id, account_id, binding_hash, secrets, issuer, client_id, interval_secs",
    )
    .bind(now)
    .bind(&hash)
    .fetch_optional(&state.store.pool)
    .await?;
    let Some(row) = row else {
        let (account, reason) = why_no_flow(&state, &hash, "device", now).await?;
        if reason == "state_unknown" && account.is_some() {
            // Live, but polled again within the second.
            return Ok(pending(5));
        }
        return Err(refuse(
            &state,
            account.as_deref(),
            None,
            reason,
            serde_json::json!({"kind": "device"}),
            &source,
        )
        .await);
    };
    let interval: i64 = row.try_get("interval_secs")?;
    let flow = flow_from(&state, &row)?;
    let acct = Some(flow.account_id.as_str());
    let p = match active_provider(&state, &flow.account_id).await? {
        Some(p) if p.issuer == flow.issuer && device_client(&p).0 == flow.client_id => p,
        _ => {
            consume(&state, &flow.id, now).await?;
            return Err(refuse(
                &state,
                acct,
                None,
                "provider_changed",
                serde_json::json!({}),
                &source,
            )
            .await);
        }
    };
    let meta = discover_or_refuse(&state, &p, &source).await?;
    let Some(token_url) = meta.token_endpoint().cloned() else {
        return Err(refuse(
            &state,
            acct,
            None,
            "no_token_endpoint",
            serde_json::json!({}),
            &source,
        )
        .await);
    };
    let device_code = flow.secrets.device_code.clone().unwrap_or_default();
    let (client_id, secret) = device_client(&p);
    let res = client_auth(
        oidc::http().post(token_url.as_str()),
        &client_id,
        secret.as_deref(),
    )
    .form(&form(
        &client_id,
        secret.is_some(),
        &[
            ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
            ("device_code", &device_code),
        ],
    ))
    .send()
    .await;
    let res = match res {
        Ok(r) => r,
        Err(e) => {
            // The provider may be back at the next poll.
            tracing::warn!(account = %p.account_id, error = %oidc::chain(&e), "SSO device poll failed");
            return Ok(pending(interval));
        }
    };
    let status = res.status();
    let body = match res.bytes().await {
        Ok(b) if b.len() <= 256 * 1024 => b,
        _ => return Ok(pending(interval)),
    };
    if !status.is_success() {
        let err = serde_json::from_slice::<OAuthError>(&body).ok();
        match err.as_ref().map(|e| e.error.as_str()) {
            Some("authorization_pending") => return Ok(pending(interval)),
            Some("slow_down") => {
                sqlx::query("UPDATE sso_flows SET interval_secs = interval_secs + 5 WHERE id = $1")
                    .bind(&flow.id)
                    .execute(&state.store.pool)
                    .await?;
                return Ok(pending(interval + 5));
            }
            _ => {
                consume(&state, &flow.id, now).await?;
                let e = err.unwrap_or(OAuthError {
                    error: format!("http_{}", status.as_u16()),
                    error_description: None,
                });
                return Err(refuse(
                    &state,
                    acct,
                    None,
                    &format!("token_error:{}", clip(&e.error, 40)),
                    serde_json::json!({"detail": clip(e.error_description.as_deref().unwrap_or(""), 200), "kind": "device"}),
                    &source,
                )
                .await);
            }
        }
    }
    // Approved: the flow is spent, whatever follows.
    if !consume(&state, &flow.id, now).await? {
        return Err(refuse(
            &state,
            acct,
            None,
            "state_replayed",
            serde_json::json!({"kind": "device"}),
            &source,
        )
        .await);
    }
    let tokens: oidc::TokenResponse = match serde_json::from_slice(&body) {
        Ok(t) => t,
        Err(e) => {
            return Err(refuse(
                &state,
                acct,
                None,
                "token_response_invalid",
                serde_json::json!({"detail": clip(&e.to_string(), 200)}),
                &source,
            )
            .await);
        }
    };
    // The device grant's ID token is for the client that polled.
    let pv = Provider {
        client_id: client_id.clone(),
        client_secret: secret.unwrap_or_default(),
        ..p.clone()
    };
    let claims = verify(&state, &pv, &meta, &tokens, None, &source).await?;
    let login = super::users::finish(
        &state,
        &p,
        claims,
        super::users::Via {
            kind: "device",
            client_id: &client_id,
            refresh_token: tokens.refresh_token().map(|t| t.secret().clone()),
        },
        &source,
    )
    .await?;
    Ok(Json(login).into_response())
}

fn pending(interval: i64) -> Response {
    (
        StatusCode::ACCEPTED,
        Json(SsoDevicePending {
            status: "pending".into(),
            interval: u32::try_from(interval.clamp(1, 60)).unwrap_or(5),
        }),
    )
        .into_response()
}
