//! Login, logout, the caller's own profile, password and second factor.

use crate::audit;
use crate::auth::{self, Caller, Via};
use crate::error::{AppError, AppResult};
use crate::extract::ApiJson;
use crate::extract::{LoginCaller, Source};
use crate::records;
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use drawbridge_proto::api::{
    LoginRequest, LoginResponse, LoginStage, PasswordChangeRequest, TotpCode, TotpEnrollResponse,
    WhoAmI,
};
use drawbridge_proto::{ApiError, ErrorCode};
use sqlx::Row;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes(r: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    r.routes(routes!(login))
        .routes(routes!(totp))
        .routes(routes!(logout))
        .routes(routes!(whoami))
        .routes(routes!(change_password))
        .routes(routes!(totp_enroll))
        .routes(routes!(totp_confirm))
}

/// Log in with account, user name and password (and TOTP code, if set up).
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "auth", security(()),
    request_body = LoginRequest,
    responses((status = 200, body = LoginResponse), (status = 401, body = ApiError)))]
async fn login(
    State(state): State<AppState>,
    Source(source): Source,
    ApiJson(req): ApiJson<LoginRequest>,
) -> AppResult<Json<LoginResponse>> {
    state.attempt(&source)?;
    Ok(Json(auth::login(&state, &req, &source).await?))
}

/// Second login step: the TOTP code, with the token from `/auth/login`.
#[utoipa::path(post, path = "/api/v1/auth/totp", tag = "auth",
    request_body = TotpCode,
    responses((status = 200, body = LoginResponse), (status = 401, body = ApiError)))]
async fn totp(
    State(state): State<AppState>,
    caller: LoginCaller,
    ApiJson(req): ApiJson<TotpCode>,
) -> AppResult<Json<LoginResponse>> {
    let caller = caller.at(&[LoginStage::TotpRequired])?;
    state.attempt(&caller.source)?;
    Ok(Json(auth::finish_totp(&state, &caller, &req.code).await?))
}

/// End this login (the token stops working at once).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "auth",
    responses((status = 204), (status = 401, body = ApiError)))]
async fn logout(State(state): State<AppState>, caller: LoginCaller) -> AppResult<StatusCode> {
    let caller = caller.0;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    auth::revoke_token(&mut tx, &caller.token_id, now).await?;
    audit::append(&mut tx, now, &caller.event("logout", &caller.actor())).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Who am I: the caller's user and account.
#[utoipa::path(get, path = "/api/v1/me", tag = "auth",
    responses((status = 200, body = WhoAmI), (status = 401, body = ApiError)))]
async fn whoami(State(state): State<AppState>, caller: Caller) -> AppResult<Json<WhoAmI>> {
    let mut conn = state.store.pool.acquire().await?;
    let user = records::user(&mut conn, &caller.account_id, &caller.user_id).await?;
    let account = records::account(&mut conn, &caller.account_id).await?;
    Ok(Json(WhoAmI {
        user: user.to_api(state.now()),
        account,
        via: match caller.via {
            Via::Login => "login".into(),
            Via::ApiToken { .. } => "api_token".into(),
        },
    }))
}

/// Change the caller's own password. Ends every login and API token of the
/// user and answers with a fresh login. Wrong current passwords count towards
/// the lockout like failed logins; a locked user and an address over the
/// attempt limit are refused before any password is checked.
#[utoipa::path(post, path = "/api/v1/me/password", tag = "auth",
    request_body = PasswordChangeRequest,
    responses((status = 200, body = LoginResponse), (status = 400, body = ApiError), (status = 401, body = ApiError), (status = 429, body = ApiError)))]
async fn change_password(
    State(state): State<AppState>,
    caller: LoginCaller,
    ApiJson(req): ApiJson<PasswordChangeRequest>,
) -> AppResult<Json<LoginResponse>> {
    let caller = caller.at(&[LoginStage::Complete, LoginStage::PasswordChangeRequired])?;
    state.attempt(&caller.source)?;
    let now = state.now();
    let mut conn = state.store.pool.acquire().await?;
    let user = records::user(&mut conn, &caller.account_id, &caller.user_id).await?;
    let account = records::account(&mut conn, &caller.account_id).await?;
    drop(conn);
    if user.locked_until.is_some_and(|t| t > now) {
        return Err(locked_error());
    }
    // Every argon2 computation runs before the write transaction.
    if !crate::password::verify_async(&req.current_password, &user.password_hash).await? {
        let mut tx = state.store.begin().await?;
        let f =
            auth::register_failure(&mut tx, &user, &account.settings, now, &caller.source).await?;
        let ev = caller
            .event("user.password_change", &caller.actor())
            .result("failed");
        audit::append(&mut tx, now, &ev).await?;
        tx.commit().await?;
        if f == auth::Failure::AlreadyLocked {
            return Err(locked_error());
        }
        return Err(AppError::new(
            ErrorCode::InvalidCode,
            "the current password is wrong",
        ));
    }
    let new = prepare_password(&state, &user, &account.settings, &req.new_password).await?;
    let mut tx = state.store.begin().await?;
    // A lock taken meanwhile (a concurrent wrong password) refuses the change.
    let locked: Option<i64> = sqlx::query_scalar("SELECT locked_until FROM users WHERE id = $1")
        .bind(&user.id)
        .fetch_one(&mut *tx)
        .await?;
    if locked.is_some_and(|t| t > now) {
        return Err(locked_error());
    }
    set_password(&mut tx, &user, &new, now).await?;
    let mut user = user;
    user.password_changed_at = now;
    let stage = auth::next_stage(&user, &account.settings, now);
    let resp = auth::issue_login_token(&mut tx, &user, &account.settings, stage, now).await?;
    audit::append(
        &mut tx,
        now,
        &caller.event("user.password_change", &caller.actor()),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(resp))
}

fn locked_error() -> AppError {
    AppError::new(
        ErrorCode::RateLimited,
        "too many wrong passwords: this user is locked for now; try again later or ask an admin to unlock it",
    )
}

/// A new password that passed the policy and history checks, hashed; made
/// before the write transaction so that no argon2 work holds it.
pub struct NewPassword {
    hash: String,
    /// The hash it replaces: the change applies only if it is still current.
    replaces: String,
}

/// Checks a new password against the policy and the history (argon2 off the
/// async workers, outside any transaction) and hashes it.
pub async fn prepare_password(
    state: &AppState,
    user: &records::UserRow,
    settings: &drawbridge_proto::AccountSettings,
    new_password: &str,
) -> AppResult<NewPassword> {
    let policy = &settings.password_policy;
    crate::password::check_policy(policy, &user.username, new_password)
        .map_err(|m| AppError::new(ErrorCode::PasswordPolicy, m))?;
    if policy.history > 0 {
        let rows = sqlx::query(
            "SELECT password_hash FROM password_history WHERE user_id = $1 ORDER BY created_at DESC LIMIT $2",
        )
        .bind(&user.id)
        .bind(i64::from(policy.history))
        .fetch_all(&state.store.pool)
        .await?;
        let mut hashes = vec![user.password_hash.clone()];
        for r in rows {
            hashes.push(r.try_get(0)?);
        }
        if crate::password::verify_any_async(new_password, hashes).await? {
            return Err(AppError::new(
                ErrorCode::PasswordPolicy,
                format!(
                    "the password must differ from the last {} passwords",
                    policy.history
                ),
            ));
        }
    }
    Ok(NewPassword {
        hash: crate::password::hash_async(new_password).await?,
        replaces: user.password_hash.clone(),
    })
}

/// Sets a password made by [`prepare_password`] and revokes every token of the
/// user; refused if the password changed since it was prepared.
pub async fn set_password(
    tx: &mut crate::db::Tx<'_>,
    user: &records::UserRow,
    new: &NewPassword,
    now: i64,
) -> AppResult<()> {
    let r = sqlx::query(
        "UPDATE users SET password_hash = $1, password_changed_at = $2 WHERE id = $3 AND password_hash = $4",
    )
    .bind(&new.hash)
    .bind(now)
    .bind(&user.id)
    .bind(&new.replaces)
    .execute(&mut **tx)
    .await?;
    if r.rows_affected() != 1 {
        return Err(AppError::conflict(
            "the password was changed meanwhile; try again",
        ));
    }
    sqlx::query(
        "INSERT INTO password_history (user_id, password_hash, created_at) VALUES ($1, $2, $3)",
    )
    .bind(&user.id)
    .bind(&new.hash)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    auth::revoke_all(tx, &user.id, now).await
}

/// Start setting up a TOTP second factor: returns the secret and otpauth URI.
/// It becomes active only after `/me/totp/confirm` with a valid code.
#[utoipa::path(post, path = "/api/v1/me/totp/enroll", tag = "auth",
    responses((status = 200, body = TotpEnrollResponse), (status = 401, body = ApiError)))]
async fn totp_enroll(
    State(state): State<AppState>,
    caller: LoginCaller,
) -> AppResult<Json<TotpEnrollResponse>> {
    let caller = caller.at(&[LoginStage::Complete, LoginStage::TotpEnrollmentRequired])?;
    let mut conn = state.store.pool.acquire().await?;
    let user = records::user(&mut conn, &caller.account_id, &caller.user_id).await?;
    let account = records::account(&mut conn, &caller.account_id).await?;
    if user.totp_secret.is_some() {
        return Err(AppError::conflict(
            "a second factor is already active; an admin can reset it",
        ));
    }
    let secret = crate::totp::new_secret();
    sqlx::query("UPDATE users SET totp_pending_secret = $1 WHERE id = $2")
        .bind(
            state
                .store
                .seal(&crate::sealed::totp_context(&user.id, true), &secret),
        )
        .bind(&user.id)
        .execute(&mut *conn)
        .await?;
    let label = format!("{}@{}", user.username, account.name);
    let otpauth_uri = crate::totp::uri(&secret, &label)
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("TOTP URI")))?;
    Ok(Json(TotpEnrollResponse {
        secret,
        otpauth_uri,
    }))
}

/// Confirm the TOTP set-up with a current code. Answers with a fresh login.
#[utoipa::path(post, path = "/api/v1/me/totp/confirm", tag = "auth",
    request_body = TotpCode,
    responses((status = 200, body = LoginResponse), (status = 401, body = ApiError)))]
async fn totp_confirm(
    State(state): State<AppState>,
    caller: LoginCaller,
    ApiJson(req): ApiJson<TotpCode>,
) -> AppResult<Json<LoginResponse>> {
    let caller = caller.at(&[LoginStage::Complete, LoginStage::TotpEnrollmentRequired])?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let user = records::user(&mut tx, &caller.account_id, &caller.user_id).await?;
    let account = records::account(&mut tx, &caller.account_id).await?;
    let pending = user.totp_pending_secret.as_deref().ok_or_else(|| {
        AppError::conflict(if user.totp_secret.is_some() {
            "a second factor is already active; an admin can reset it"
        } else {
            "no second factor is being set up: start with /me/totp/enroll"
        })
    })?;
    let pending = state
        .store
        .unseal(&crate::sealed::totp_context(&user.id, true), pending)?;
    let Some(step) = crate::totp::check(&pending, &req.code, now, 0) else {
        return Err(AppError::invalid_code());
    };
    sqlx::query(
        "UPDATE users SET totp_secret = $1, totp_pending_secret = NULL, totp_last_step = $2 WHERE id = $3",
    )
    .bind(
        state
            .store
            .seal(&crate::sealed::totp_context(&user.id, false), &pending),
    )
    .bind(step)
    .bind(&user.id)
    .execute(&mut *tx)
    .await?;
    auth::revoke_token(&mut tx, &caller.token_id, now).await?;
    let mut user = user;
    user.totp_secret = Some(pending);
    let stage = auth::next_stage(&user, &account.settings, now);
    let resp = auth::issue_login_token(&mut tx, &user, &account.settings, stage, now).await?;
    audit::append(
        &mut tx,
        now,
        &caller.event("user.totp_enable", &caller.actor()),
    )
    .await?;
    tx.commit().await?;
    Ok(Json(resp))
}
