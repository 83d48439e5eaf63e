//! SSO logins in the browser: the authorization code flow with PKCE, nonce and
//! state, for the portal (`/sso/start`, `/sso/complete`), and what every SSO
//! login shares: the flow rows, refusals on the record, ID token verification.
//!
//! A login in flight is one `sso_flows` row: the state (hashed), the browser
//! binding (hashed), the nonce, PKCE verifier or device code (sealed), an
//! expiry of 10 minutes. The callback consumes it in one conditional update,
//! so a replayed or concurrent callback finds nothing. The checks run in this
//! order: the flow (unknown, replayed, expired), the provider's error, the
//! browser binding, the provider unchanged, the RFC 9207 `iss`, the code
//! exchange with the PKCE verifier, the ID token (signature, algorithm,
//! issuer, audience, expiry, nonce, `at_hash`), then the user ([`super::users`]).
//! Every refusal is an `sso.refused` audit entry with its reason, and creates
//! no token. Codes, tokens, verifiers and secrets are never logged.

use super::{Provider, oidc, provider};
use crate::audit::{self, Event};
use crate::error::{AppError, AppResult};
use crate::extract::{ApiJson, ApiQuery, Source};
use crate::records;
use crate::secret;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use drawbridge_proto::api::LoginResponse;
use drawbridge_proto::sso::{
    SsoCompleteRequest, SsoMode, SsoPublicInfo, SsoStartRequest, SsoStartResponse,
};
use drawbridge_proto::{ApiError, ErrorCode};
use openidconnect::{
    AccessTokenHash, AuthorizationCode, CsrfToken, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, Scope, TokenResponse as _,
};
use serde::{Deserialize, Serialize};
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// How long a login may take at the provider.
const FLOW_SECS: i64 = 10 * 60;
/// Flows this long past their expiry are deleted.
const PURGE_AFTER_SECS: i64 = 60 * 60;
/// Most logins in flight per account (each start is also limited per address).
const MAX_LIVE_FLOWS: i64 = 2000;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(public_info))
        .routes(routes!(start))
        .routes(routes!(complete))
}

/// Where a login in flight keeps its secrets.
pub fn flow_context(id: &str) -> String {
    format!("sso_flows:{id}")
}

/// What a flow keeps sealed.
#[derive(Serialize, Deserialize, Default)]
pub(super) struct FlowSecrets {
    #[serde(default)]
    pub(super) nonce: Option<String>,
    #[serde(default)]
    pub(super) verifier: Option<String>,
    #[serde(default)]
    pub(super) device_code: Option<String>,
}

/// A refused SSO login: audited, then this error.
fn refused_error(reason: &str) -> AppError {
    AppError::new(
        ErrorCode::LoginFailed,
        format!("single sign-on refused: {reason}"),
    )
}

/// Appends `sso.refused` (on the account's chain when known) and returns the error.
pub(super) async fn refuse(
    state: &AppState,
    account_id: Option<&str>,
    actor: Option<&str>,
    reason: &str,
    details: serde_json::Value,
    source: &str,
) -> AppError {
    let chain = account_id.unwrap_or(audit::SYSTEM_ACCOUNT);
    let mut d = serde_json::json!({ "reason": reason });
    if let (Some(obj), serde_json::Value::Object(extra)) = (d.as_object_mut(), details) {
        obj.extend(extra);
    }
    let ev = Event::new(
        chain,
        actor.unwrap_or("anonymous"),
        "sso.refused",
        "account:sso",
    )
    .result("denied")
    .source(source)
    .details(d);
    if let Err(e) = audit::record(&state.store, state.now(), &ev).await {
        return e.into();
    }
    metrics::counter!("sso_logins_total", "result" => "refused").increment(1);
    refused_error(reason)
}

/// Short, printable, bounded text from the provider for the audit log.
pub(super) fn clip(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
struct AccountQuery {
    /// The account's name.
    account: String,
}

pub(super) async fn account_by_name(
    state: &AppState,
    name: &str,
) -> AppResult<Option<drawbridge_proto::api::Account>> {
    if name.is_empty() || name.len() > 256 {
        return Ok(None);
    }
    sqlx::query(&format!(
        "SELECT {} FROM accounts WHERE name = $1",
        records::ACCOUNT_COLS
    ))
    .bind(name)
    .fetch_optional(&state.store.pool)
    .await?
    .map(|r| records::account_from(&r))
    .transpose()
}

/// The account's provider when SSO is on (optional or required).
pub(super) async fn active_provider(
    state: &AppState,
    account_id: &str,
) -> AppResult<Option<Provider>> {
    let mut conn = state.store.pool.acquire().await?;
    Ok(provider(state, &mut conn, account_id)
        .await?
        .filter(|p| p.mode != SsoMode::Off))
}

/// Whether an account offers single sign-on, for the login page (no login
/// needed; an unknown account answers like one without SSO).
#[utoipa::path(get, path = "/api/v1/sso/provider", tag = "sso", security(()), params(AccountQuery),
    responses((status = 200, body = SsoPublicInfo)))]
async fn public_info(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<AccountQuery>,
) -> AppResult<Json<SsoPublicInfo>> {
    let p = match account_by_name(&state, &q.account).await? {
        Some(a) => active_provider(&state, &a.id).await?,
        None => None,
    };
    Ok(Json(match p {
        Some(p) => SsoPublicInfo {
            enabled: true,
            required: p.mode == SsoMode::Required,
            label: p.label,
        },
        None => SsoPublicInfo {
            enabled: false,
            required: false,
            label: String::new(),
        },
    }))
}

/// The provider's discovery document, or a refusal on the record.
pub(super) async fn discover_or_refuse(
    state: &AppState,
    p: &Provider,
    source: &str,
) -> AppResult<oidc::Meta> {
    match oidc::discover(&p.issuer, false).await {
        Ok(m) => Ok(m),
        Err(e) => {
            tracing::warn!(account = %p.account_id, issuer = %p.issuer, error = %e, "SSO discovery failed");
            Err(refuse(
                state,
                Some(&p.account_id),
                None,
                "discovery_failed",
                serde_json::json!({"issuer": p.issuer, "detail": clip(&e, 300)}),
                source,
            )
            .await)
        }
    }
}

pub(super) async fn purge(state: &AppState, now: i64) -> AppResult<()> {
    sqlx::query("DELETE FROM sso_flows WHERE expires_at < $1")
        .bind(now - PURGE_AFTER_SECS)
        .execute(&state.store.pool)
        .await?;
    Ok(())
}

/// Refuses a new flow when the account has [`MAX_LIVE_FLOWS`] in flight.
pub(super) async fn room_for_a_flow(state: &AppState, p: &Provider, now: i64) -> AppResult<()> {
    let live: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sso_flows WHERE account_id = $1 AND expires_at > $2 AND consumed_at IS NULL",
    )
    .bind(&p.account_id)
    .bind(now)
    .fetch_one(&state.store.pool)
    .await?;
    if live >= MAX_LIVE_FLOWS {
        return Err(AppError::new(
            ErrorCode::RateLimited,
            "too many single sign-on logins in flight for this account; try again in a few minutes",
        ));
    }
    Ok(())
}

/// The first steps of every login at a provider (browser or device grant):
/// the address's allowance, the named account's active provider (a refusal on
/// the record when it has none), room for another flow, and the provider's
/// discovery document. Returns the time, the provider and its metadata.
pub(super) async fn begin(
    state: &AppState,
    source: &str,
    account_name: &str,
) -> AppResult<(i64, Provider, oidc::Meta)> {
    state.attempt(source)?;
    let now = state.now();
    purge(state, now).await?;
    let account = account_by_name(state, account_name).await?;
    let Some(p) = (match &account {
        Some(a) => active_provider(state, &a.id).await?,
        None => None,
    }) else {
        return Err(refuse(
            state,
            account.as_ref().map(|a| a.id.as_str()),
            None,
            "sso_off",
            serde_json::json!({"account": clip(account_name, 64)}),
            source,
        )
        .await);
    };
    room_for_a_flow(state, &p, now).await?;
    let meta = discover_or_refuse(state, &p, source).await?;
    Ok((now, p, meta))
}

/// Begin a browser login at the account's provider. Answers the URL to send
/// the browser to and a `binding` for a cookie of that browser (see
/// `SsoStartResponse`). The portal serves this as `GET /portal/sso/start`.
#[utoipa::path(post, path = "/api/v1/sso/start", tag = "sso", security(()), request_body = SsoStartRequest,
    responses((status = 200, body = SsoStartResponse), (status = 401, body = ApiError), (status = 429, body = ApiError)))]
async fn start(
    State(state): State<AppState>,
    Source(source): Source,
    ApiJson(req): ApiJson<SsoStartRequest>,
) -> AppResult<Json<SsoStartResponse>> {
    let (now, p, meta) = begin(&state, &source, &req.account).await?;
    let client = oidc::client(
        &meta,
        &p.client_id,
        Some(&p.client_secret),
        &super::redirect_uri(&state),
    )
    .map_err(|e| AppError::internal(anyhow::anyhow!("SSO client: {e}")))?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut auth = client.authorize_url(
        openidconnect::core::CoreAuthenticationFlow::AuthorizationCode,
        CsrfToken::new_random,
        Nonce::new_random,
    );
    for s in &p.scopes {
        auth = auth.add_scope(Scope::new(s.clone()));
    }
    let (url, csrf, nonce) = auth.set_pkce_challenge(challenge).url();
    let id = secret::new_id();
    let binding = secret::new_token("dbb_");
    let secrets = FlowSecrets {
        nonce: Some(nonce.secret().clone()),
        verifier: Some(verifier.secret().clone()),
        device_code: None,
    };
    let sealed = state.store.seal(
        &flow_context(&id),
        &serde_json::to_string(&secrets).map_err(AppError::internal)?,
    );
    let expires_at = now + FLOW_SECS;
    sqlx::query(
        "INSERT INTO sso_flows (id, account_id, kind, state_hash, binding_hash, secrets, issuer, client_id, source, created_at, expires_at)
         VALUES ($1, $2, 'web', $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&id)
    .bind(&p.account_id)
    .bind(secret::token_hash(csrf.secret()))
    .bind(secret::token_hash(&binding))
    .bind(&sealed)
    .bind(&p.issuer)
    .bind(&p.client_id)
    .bind(&source)
    .bind(now)
    .bind(expires_at)
    .execute(&state.store.pool)
    .await?;
    Ok(Json(SsoStartResponse {
        authorize_url: url.to_string(),
        binding,
        expires_at: crate::clock::from_unix(expires_at),
    }))
}

/// A consumed flow row.
pub(super) struct Flow {
    pub(super) id: String,
    pub(super) account_id: String,
    pub(super) binding_hash: Option<String>,
    pub(super) secrets: FlowSecrets,
    pub(super) issuer: String,
    pub(super) client_id: String,
}

pub(super) fn flow_from(state: &AppState, row: &sqlx::any::AnyRow) -> AppResult<Flow> {
    let id: String = row.try_get("id")?;
    let sealed: String = row.try_get("secrets")?;
    let plain = state.store.unseal(&flow_context(&id), &sealed)?;
    Ok(Flow {
        secrets: serde_json::from_str(&plain)
            .map_err(|_| AppError::internal(anyhow::anyhow!("stored sso flow does not parse")))?,
        account_id: row.try_get("account_id")?,
        binding_hash: row.try_get("binding_hash")?,
        issuer: row.try_get("issuer")?,
        client_id: row.try_get("client_id")?,
        id,
    })
}

/// Why no flow was consumed for this state: unknown, already used, expired.
pub(super) async fn why_no_flow(
    state: &AppState,
    state_hash: &str,
    kind: &str,
    now: i64,
) -> AppResult<(Option<String>, &'static str)> {
    let row = sqlx::query(
        "SELECT account_id, consumed_at, expires_at FROM sso_flows WHERE state_hash = $1 AND kind = $2",
    )
    .bind(state_hash)
    .bind(kind)
    .fetch_optional(&state.store.pool)
    .await?;
    Ok(match row {
        None => (None, "state_unknown"),
        Some(r) => {
            let account: String = r.try_get("account_id")?;
            if r.try_get::<Option<i64>, _>("consumed_at")?.is_some() {
                (Some(account), "state_replayed")
            } else if r.try_get::<i64, _>("expires_at")? <= now {
                (Some(account), "flow_expired")
            } else {
                (Some(account), "state_unknown")
            }
        }
    })
}

/// Finish a browser login with the provider's answer at the redirect URI
/// (`code`, `state`, `iss`, or `error`) and the browser's binding cookie.
/// Answers an ordinary login (as `/auth/login` does: complete, or a second
/// factor still to give). The portal serves this as `GET /portal/sso/callback`.
#[utoipa::path(post, path = "/api/v1/sso/complete", tag = "sso", security(()), request_body = SsoCompleteRequest,
    responses((status = 200, body = LoginResponse), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError)))]
async fn complete(
    State(state): State<AppState>,
    Source(source): Source,
    ApiJson(req): ApiJson<SsoCompleteRequest>,
) -> AppResult<Json<LoginResponse>> {
    state.attempt(&source)?;
    let too_long = |v: Option<&String>, max: usize| v.is_some_and(|s| s.len() > max);
    if req.binding.len() > 256
        || req.state.is_empty()
        || req.state.len() > 512
        || too_long(req.code.as_ref(), 4096)
        || too_long(req.iss.as_ref(), 512)
        || too_long(req.error.as_ref(), 256)
        || too_long(req.error_description.as_ref(), 1024)
    {
        return Err(AppError::bad_request(
            "a value of the provider's answer is too long",
        ));
    }
    let now = state.now();
    let state_hash = secret::token_hash(&req.state);
    // Single use: of concurrent callbacks with this state exactly one gets the row.
    let row = sqlx::query(
        "UPDATE sso_flows SET consumed_at = $1
         WHERE state_hash = $2 AND kind = 'web' AND consumed_at IS NULL AND expires_at > $1
         RETURNING id, account_id, binding_hash, secrets, issuer, client_id",
    )
    .bind(now)
    .bind(&state_hash)
    .fetch_optional(&state.store.pool)
    .await?;
    let Some(row) = row else {
        let (account, reason) = why_no_flow(&state, &state_hash, "web", now).await?;
        return Err(refuse(
            &state,
            account.as_deref(),
            None,
            reason,
            serde_json::json!({}),
            &source,
        )
        .await);
    };
    let flow = flow_from(&state, &row)?;
    let acct = Some(flow.account_id.as_str());
    if let Some(err) = &req.error {
        return Err(refuse(
            &state,
            acct,
            None,
            "idp_error",
            serde_json::json!({"error": clip(err, 64), "description": clip(req.error_description.as_deref().unwrap_or(""), 200)}),
            &source,
        )
        .await);
    }
    let binding_ok = flow
        .binding_hash
        .as_deref()
        .is_some_and(|h| secret::ct_eq(h.as_bytes(), secret::token_hash(&req.binding).as_bytes()));
    if !binding_ok {
        return Err(refuse(
            &state,
            acct,
            None,
            "browser_mismatch",
            serde_json::json!({}),
            &source,
        )
        .await);
    }
    let p = match active_provider(&state, &flow.account_id).await? {
        Some(p) if p.issuer == flow.issuer && p.client_id == flow.client_id => p,
        _ => {
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
    // RFC 9207: the answer names its issuer; a mix-up with another provider is refused.
    if let Some(iss) = &req.iss
        && *iss != p.issuer
    {
        return Err(refuse(
            &state,
            acct,
            None,
            "issuer_mismatch",
            serde_json::json!({"iss": clip(iss, 200), "issuer": p.issuer}),
            &source,
        )
        .await);
    }
    let meta = discover_or_refuse(&state, &p, &source).await?;
    if req.iss.is_none()
        && meta
            .additional_metadata()
            .authorization_response_iss_parameter_supported
            == Some(true)
    {
        return Err(refuse(
            &state,
            acct,
            None,
            "issuer_missing",
            serde_json::json!({"issuer": p.issuer}),
            &source,
        )
        .await);
    }
    let Some(code) = req.code.as_deref().filter(|c| !c.is_empty()) else {
        return Err(refuse(
            &state,
            acct,
            None,
            "no_code",
            serde_json::json!({}),
            &source,
        )
        .await);
    };
    let (Some(nonce), Some(verifier)) = (flow.secrets.nonce.clone(), flow.secrets.verifier.clone())
    else {
        return Err(AppError::internal(anyhow::anyhow!(
            "sso flow {} lacks its secrets",
            flow.id
        )));
    };
    let client = oidc::client(
        &meta,
        &p.client_id,
        Some(&p.client_secret),
        &super::redirect_uri(&state),
    )
    .map_err(|e| AppError::internal(anyhow::anyhow!("SSO client: {e}")))?;
    let exchange = client
        .exchange_code(AuthorizationCode::new(code.to_string()))
        .map_err(|e| AppError::internal(anyhow::anyhow!("SSO token endpoint: {e}")))?
        .set_pkce_verifier(PkceCodeVerifier::new(verifier))
        .request_async(&oidc::http())
        .await;
    let tokens: oidc::TokenResponse = match exchange {
        Ok(t) => t,
        Err(e) => {
            let (reason, detail) = token_error(&e);
            return Err(refuse(
                &state,
                acct,
                None,
                &reason,
                serde_json::json!({"detail": detail}),
                &source,
            )
            .await);
        }
    };
    let claims = verify(&state, &p, &meta, &tokens, Some(&nonce), &source).await?;
    super::users::finish(
        &state,
        &p,
        claims,
        super::users::Via {
            kind: "web",
            client_id: &p.client_id,
            refresh_token: tokens.refresh_token().map(|t| t.secret().clone()),
        },
        &source,
    )
    .await
    .map(Json)
}

/// The reason and a printable detail of a failed token request (never the body).
pub(super) fn token_error<RE: std::error::Error + 'static>(
    e: &openidconnect::RequestTokenError<
        RE,
        openidconnect::StandardErrorResponse<openidconnect::core::CoreErrorResponseType>,
    >,
) -> (String, String) {
    use openidconnect::RequestTokenError as R;
    match e {
        R::ServerResponse(r) => (
            format!("token_error:{}", clip(r.error().as_ref(), 40)),
            clip(r.error_description().map(String::as_str).unwrap_or(""), 200),
        ),
        R::Request(r) => ("token_request_failed".into(), clip(&oidc::chain(r), 300)),
        R::Parse(p, _) => ("token_response_invalid".into(), clip(&p.to_string(), 300)),
        R::Other(o) => ("token_request_failed".into(), clip(o, 300)),
    }
}

/// The ID token of `tokens`, verified: signature by the provider's keys (one
/// fresh fetch when the key is unknown: rotation), allowed algorithms only,
/// issuer, audience = client id, expiry by the server's clock, the nonce
/// (`None`: the token must have none, the device grant), and `at_hash`.
pub(super) async fn verify(
    state: &AppState,
    p: &Provider,
    meta: &oidc::Meta,
    tokens: &oidc::TokenResponse,
    nonce: Option<&str>,
    source: &str,
) -> AppResult<oidc::IdTokenClaims> {
    let acct = Some(p.account_id.as_str());
    let Some(id_token) = tokens.id_token() else {
        return Err(refuse(
            state,
            acct,
            None,
            "no_id_token",
            serde_json::json!({}),
            source,
        )
        .await);
    };
    let (client_id, secret) = (p.client_id.clone(), p.client_secret.clone());
    let mut meta = meta.clone();
    let mut refetched = false;
    loop {
        let now = state.now();
        let client = oidc::client(
            &meta,
            &client_id,
            Some(&secret),
            &super::redirect_uri(state),
        )
        .map_err(|e| AppError::internal(anyhow::anyhow!("SSO client: {e}")))?;
        let verifier = client
            .id_token_verifier()
            .set_allowed_algs(oidc::ALLOWED_ALGS)
            .set_time_fn(move || oidc::chrono_time(now));
        let r = match nonce {
            Some(n) => id_token.claims(&verifier, &Nonce::new(n.to_string())),
            None => id_token.claims(&verifier, |n: Option<&Nonce>| match n {
                None => Ok(()),
                Some(_) => Err("unexpected nonce".to_string()),
            }),
        };
        let claims = match r {
            Ok(c) => c,
            Err(openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            )) if !refetched => {
                refetched = true;
                meta = match oidc::discover(&p.issuer, true).await {
                    Ok(m) => m,
                    Err(_) => continue,
                };
                continue;
            }
            Err(e) => {
                return Err(refuse(
                    state,
                    acct,
                    None,
                    &oidc::claims_reason(&e),
                    serde_json::json!({"detail": clip(&e.to_string(), 300)}),
                    source,
                )
                .await);
            }
        };
        if let Some(expected) = claims.access_token_hash() {
            let ok = match (id_token.signing_alg(), id_token.signing_key(&verifier)) {
                (Ok(alg), Ok(key)) => AccessTokenHash::from_token(tokens.access_token(), alg, key)
                    .is_ok_and(|h| h == *expected),
                _ => false,
            };
            if !ok {
                return Err(refuse(
                    state,
                    acct,
                    None,
                    "at_hash_mismatch",
                    serde_json::json!({}),
                    source,
                )
                .await);
            }
        }
        return Ok(claims.clone());
    }
}

/// Marks a flow used; false when it already was.
pub(super) async fn consume(state: &AppState, id: &str, now: i64) -> AppResult<bool> {
    let r =
        sqlx::query("UPDATE sso_flows SET consumed_at = $1 WHERE id = $2 AND consumed_at IS NULL")
            .bind(now)
            .bind(id)
            .execute(&state.store.pool)
            .await?;
    Ok(r.rows_affected() == 1)
}
