//! SSO logins kept in step with the provider. When the provider hands out a
//! refresh token (most do with the `offline_access` scope; Keycloak always),
//! a complete SSO login keeps it sealed (`sso_sessions`), and every 15 minutes
//! the token is used: the new ID token's groups go through the account's rules
//! again (a user taken out of a provider group loses what the rule gave), and a
//! provider that refuses the refresh (the user was disabled or signed out
//! there) ends the Drawbridge login (`sso.refresh_revoked`). Every replica runs
//! [`spawn`]; a session is claimed by one conditional update before its refresh.

use super::login::clip;
use super::users::apply_rules;
use super::{oidc, provider};
use crate::audit::{self, Event};
use crate::auth;
use crate::db::Tx;
use crate::error::{AppError, AppResult};
use crate::records;
use crate::secret;
use crate::state::AppState;
use openidconnect::{Nonce, OAuth2TokenResponse, RefreshToken, TokenResponse as _};
use sqlx::Row;
use std::time::Duration;

/// How often a login's rights are read from the provider again.
pub const REFRESH_SECS: i64 = 15 * 60;
/// Most sessions one pass refreshes.
const BATCH: i64 = 100;

/// Where a login's refresh token is stored.
pub fn context(token_id: &str) -> String {
    format!("sso_sessions.refresh_token:{token_id}")
}

/// Keeps the refresh token of the login `login_token` (in the login's transaction).
#[allow(clippy::too_many_arguments)]
pub(super) async fn keep(
    tx: &mut Tx<'_>,
    state: &AppState,
    login_token: &str,
    account_id: &str,
    identity_id: &str,
    client_id: &str,
    refresh_token: &str,
    now: i64,
) -> AppResult<()> {
    if refresh_token.is_empty() || refresh_token.len() > 8192 {
        return Ok(());
    }
    let token_id: String = sqlx::query_scalar("SELECT id FROM auth_tokens WHERE token_hash = $1")
        .bind(secret::token_hash(login_token))
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO sso_sessions (token_id, account_id, identity_id, client_id, refresh_token, next_refresh_at)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(&token_id)
    .bind(account_id)
    .bind(identity_id)
    .bind(client_id)
    .bind(state.store.seal(&context(&token_id), refresh_token))
    .bind(now + REFRESH_SECS)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Runs [`refresh_due`] every minute.
pub fn spawn(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            if let Err(e) = refresh_due(&state, state.now()).await {
                tracing::warn!(error = %e.message, "SSO refresh failed");
            }
        }
    });
}

/// Refreshes the SSO logins due by `due_by` (unix seconds; the clock's now,
/// or later in tests). Returns how many were refreshed or ended.
pub async fn refresh_due(state: &AppState, due_by: i64) -> AppResult<usize> {
    let now = state.now();
    // Logins that ended take their refresh tokens with them.
    sqlx::query(
        "DELETE FROM sso_sessions WHERE token_id IN
           (SELECT id FROM auth_tokens WHERE revoked_at IS NOT NULL OR expires_at <= $1)",
    )
    .bind(now)
    .execute(&state.store.pool)
    .await?;
    let due: Vec<String> = sqlx::query_scalar(
        "SELECT token_id FROM sso_sessions WHERE next_refresh_at <= $1 ORDER BY next_refresh_at LIMIT $2",
    )
    .bind(due_by)
    .bind(BATCH)
    .fetch_all(&state.store.pool)
    .await?;
    let mut done = 0;
    for token_id in due {
        // One replica per session and round.
        let claimed = sqlx::query(
            "UPDATE sso_sessions SET next_refresh_at = $1 WHERE token_id = $2 AND next_refresh_at <= $3",
        )
        .bind(now + REFRESH_SECS)
        .bind(&token_id)
        .bind(due_by)
        .execute(&state.store.pool)
        .await?;
        if claimed.rows_affected() != 1 {
            continue;
        }
        match refresh_one(state, &token_id).await {
            Ok(()) => done += 1,
            Err(e) => tracing::warn!(error = %e.message, "SSO refresh of a login failed"),
        }
    }
    Ok(done)
}

async fn forget(state: &AppState, token_id: &str) -> AppResult<()> {
    sqlx::query("DELETE FROM sso_sessions WHERE token_id = $1")
        .bind(token_id)
        .execute(&state.store.pool)
        .await?;
    Ok(())
}

async fn refresh_one(state: &AppState, token_id: &str) -> AppResult<()> {
    let row = sqlx::query(
        "SELECT s.account_id, s.identity_id, s.client_id, s.refresh_token, i.issuer, i.subject, i.user_id,
                i.granted_role, i.base_role
         FROM sso_sessions s JOIN sso_identities i ON i.id = s.identity_id
         WHERE s.token_id = $1",
    )
    .bind(token_id)
    .fetch_optional(&state.store.pool)
    .await?;
    let Some(row) = row else {
        return Ok(());
    };
    let account_id: String = row.try_get("account_id")?;
    let identity_id: String = row.try_get("identity_id")?;
    let client_id: String = row.try_get("client_id")?;
    let issuer: String = row.try_get("issuer")?;
    let subject: String = row.try_get("subject")?;
    let user_id: String = row.try_get("user_id")?;
    let refresh_token = state.store.unseal(
        &context(token_id),
        &row.try_get::<String, _>("refresh_token")?,
    )?;
    let p = {
        let mut conn = state.store.pool.acquire().await?;
        provider(state, &mut conn, &account_id).await?
    };
    // The provider is gone or another one now: nothing to refresh against.
    let Some(p) = p.filter(|p| p.issuer == issuer && p.mode != drawbridge_proto::sso::SsoMode::Off)
    else {
        return forget(state, token_id).await;
    };
    let secret = (client_id == p.client_id).then(|| p.client_secret.clone());
    let meta = oidc::discover(&p.issuer, false)
        .await
        .map_err(|e| AppError::internal(anyhow::anyhow!("SSO refresh: {e}")))?;
    let client = oidc::client(
        &meta,
        &client_id,
        secret.as_deref(),
        &super::redirect_uri(state),
    )
    .map_err(|e| AppError::internal(anyhow::anyhow!("SSO client: {e}")))?;
    let rt = RefreshToken::new(refresh_token);
    let answer = client
        .exchange_refresh_token(&rt)
        .map_err(|e| AppError::internal(anyhow::anyhow!("SSO token endpoint: {e}")))?
        .request_async(&oidc::http())
        .await;
    let now = state.now();
    let tokens: oidc::TokenResponse = match answer {
        Ok(t) => t,
        Err(openidconnect::RequestTokenError::ServerResponse(r)) => {
            // The provider refuses: the Drawbridge login ends with it.
            let reason = format!("token_error:{}", clip(r.error().as_ref(), 40));
            return revoke(state, &account_id, &user_id, token_id, &reason, now).await;
        }
        Err(e) => {
            // Unreachable or garbled: try again next round.
            return Err(AppError::internal(anyhow::anyhow!(
                "SSO refresh: {}",
                oidc::chain(&e)
            )));
        }
    };
    // The groups come from a fresh ID token; without one the rights stay as they are.
    let claims = match tokens.id_token() {
        Some(id_token) => {
            let verifier = client
                .id_token_verifier()
                .set_allowed_algs(oidc::ALLOWED_ALGS)
                .set_time_fn(move || oidc::chrono_time(now));
            // A refreshed ID token may repeat the login's nonce or have none.
            match id_token.claims(&verifier, |_: Option<&Nonce>| Ok(())) {
                Ok(c) if c.subject().as_str() == subject => Some(c.clone()),
                Ok(_) => {
                    return revoke(
                        state,
                        &account_id,
                        &user_id,
                        token_id,
                        "subject_changed",
                        now,
                    )
                    .await;
                }
                Err(e) => {
                    let reason = oidc::claims_reason(&e);
                    return revoke(state, &account_id, &user_id, token_id, &reason, now).await;
                }
            }
        }
        None => None,
    };
    let mut tx = state.store.begin().await?;
    let user = records::user(&mut tx, &account_id, &user_id).await?;
    let mut touched = Vec::new();
    if let Some(claims) = claims {
        let groups = oidc::groups(&claims, &p.groups_claim);
        let granted: Option<String> = row.try_get("granted_role")?;
        let base: Option<String> = row.try_get("base_role")?;
        let (_, t) = apply_rules(
            &mut tx,
            &p,
            &user,
            &identity_id,
            (granted, base),
            &groups,
            "sso-refresh",
            now,
        )
        .await?;
        touched = t;
    }
    if let Some(new) = tokens.refresh_token()
        && new.secret() != rt.secret()
        && new.secret().len() <= 8192
    {
        sqlx::query("UPDATE sso_sessions SET refresh_token = $1 WHERE token_id = $2")
            .bind(state.store.seal(&context(token_id), new.secret()))
            .bind(token_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    crate::live::notify_sessions(state, &touched).await?;
    Ok(())
}

/// Ends the login whose refresh the provider refused, on the record.
async fn revoke(
    state: &AppState,
    account_id: &str,
    user_id: &str,
    token_id: &str,
    reason: &str,
    now: i64,
) -> AppResult<()> {
    let mut tx = state.store.begin().await?;
    auth::revoke_token(&mut tx, token_id, now).await?;
    sqlx::query("DELETE FROM sso_sessions WHERE token_id = $1")
        .bind(token_id)
        .execute(&mut *tx)
        .await?;
    let ev = Event::new(
        account_id,
        "system",
        "sso.refresh_revoked",
        &format!("user:{user_id}"),
    )
    .result("denied")
    .details(serde_json::json!({"reason": reason}));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(())
}
