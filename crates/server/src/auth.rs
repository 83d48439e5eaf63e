//! Who is calling: login, bearer tokens, lockout, and a token resolved into a
//! [`Caller`] (the request extractors that use it are in `extract.rs`).
//!
//! Tokens are opaque 256-bit random strings; only their SHA-256 is stored.
//! A login that still needs a second factor, a TOTP enrolment or a password
//! change gets a token whose `stage` lets it call only the route that finishes
//! the login; [`Caller`] accepts only complete tokens.

use crate::audit::{self, Event};
use crate::db::Tx;
use crate::error::{AppError, AppResult};
use crate::records::{self, UserRow};
use crate::secret;
use crate::state::AppState;
use drawbridge_proto::api::{LoginRequest, LoginResponse, LoginStage};
use drawbridge_proto::{AccountSettings, Action, ErrorCode, Role};
use sqlx::Row;

/// How long a half-finished login may take.
const PENDING_SECS: i64 = 5 * 60;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Login,
    /// `data_only` tokens may only read data routes (and are read-only).
    ApiToken {
        read_only: bool,
        data_only: bool,
    },
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub account_id: String,
    pub username: String,
    pub role: Role,
    pub token_id: String,
    pub via: Via,
    pub stage: LoginStage,
    /// The remote address, for the audit log.
    pub source: String,
}

impl Caller {
    /// An API token that may only read (GET).
    pub fn read_only(&self) -> bool {
        matches!(self.via, Via::ApiToken { read_only, data_only } if read_only || data_only)
    }

    /// An API token limited to the data routes ([`crate::api::data::DATA_SCOPE`]).
    pub fn data_only(&self) -> bool {
        matches!(
            self.via,
            Via::ApiToken {
                data_only: true,
                ..
            }
        )
    }

    pub fn actor(&self) -> String {
        format!("user:{}", self.user_id)
    }

    /// An audit event by this caller.
    pub fn event(&self, action: &str, object: &str) -> Event {
        Event::new(&self.account_id, &self.actor(), action, object)
            .source(&self.source)
            .details(serde_json::json!({ "username": self.username }))
    }

    /// The role matrix check. A refusal is on the record.
    pub async fn require(&self, state: &AppState, action: Action, what: &str) -> AppResult<()> {
        if self.role.permits(action) {
            return Ok(());
        }
        self.denied(state, what).await
    }

    /// Records a refusal and returns the forbidden error.
    pub async fn denied<T>(&self, state: &AppState, what: &str) -> AppResult<T> {
        let ev = self.event(what, "-").result("denied");
        audit::record(&state.store, state.now(), &ev).await?;
        Err(AppError::forbidden())
    }
}

fn stage_str(s: LoginStage) -> &'static str {
    match s {
        LoginStage::Complete => "complete",
        LoginStage::TotpRequired => "totp_required",
        LoginStage::TotpEnrollmentRequired => "totp_enrollment_required",
        LoginStage::PasswordChangeRequired => "password_change_required",
    }
}

fn parse_stage(s: &str) -> Option<LoginStage> {
    Some(match s {
        "complete" => LoginStage::Complete,
        "totp_required" => LoginStage::TotpRequired,
        "totp_enrollment_required" => LoginStage::TotpEnrollmentRequired,
        "password_change_required" => LoginStage::PasswordChangeRequired,
        _ => return None,
    })
}

/// Resolves a bearer token at any stage (`source`: the remote address), enforcing expiry, idle timeout,
/// revocation and disabled users.
pub(crate) async fn resolve(state: &AppState, token: &str, source: String) -> AppResult<Caller> {
    resolve_by(state, TokenKey::Hash(secret::token_hash(token)), source).await
}

/// Resolves the token with this id (never shown to anyone; a device origin's
/// cookie names the login it was opened with) with the same checks as
/// [`resolve`]: a revoked, expired or idle login, or a disabled user, is refused.
pub(crate) async fn resolve_id(
    state: &AppState,
    token_id: &str,
    source: String,
) -> AppResult<Caller> {
    resolve_by(state, TokenKey::Id(token_id.to_string()), source).await
}

enum TokenKey {
    Hash(String),
    Id(String),
}

async fn resolve_by(state: &AppState, key: TokenKey, source: String) -> AppResult<Caller> {
    let now = state.now();
    let (column, value) = match key {
        TokenKey::Hash(h) => ("t.token_hash", h),
        TokenKey::Id(id) => ("t.id", id),
    };
    let row = sqlx::query(&format!(
        "SELECT t.id, t.account_id, t.user_id, t.kind, t.stage, t.read_only, t.data_only, t.last_used_at, t.expires_at,
                t.revoked_at, u.username, u.role, u.disabled, u.totp_secret, a.settings
         FROM auth_tokens t JOIN users u ON u.id = t.user_id JOIN accounts a ON a.id = t.account_id
         WHERE {column} = $1"
    ))
    .bind(value)
    .fetch_optional(&state.store.pool)
    .await?
    .ok_or_else(AppError::unauthenticated)?;
    let revoked: Option<i64> = row.try_get("revoked_at")?;
    let expires_at: i64 = row.try_get("expires_at")?;
    let last_used: i64 = row.try_get("last_used_at")?;
    let disabled = row.try_get::<i64, _>("disabled")? != 0;
    let kind: String = row.try_get("kind")?;
    let settings: AccountSettings = records::json_col(&row, "settings")?;
    let idle_limit = i64::from(settings.login_idle_minutes) * 60;
    if revoked.is_some() || disabled || now >= expires_at {
        return Err(AppError::unauthenticated());
    }
    let id: String = row.try_get("id")?;
    // Mandatory second factor: a user without one has no API access until
    // they enrol (their logins were revoked when it became mandatory).
    if kind == "api"
        && settings.require_totp
        && row.try_get::<Option<String>, _>("totp_secret")?.is_none()
    {
        return Err(AppError::new(
            ErrorCode::Unauthenticated,
            "this account requires a second factor: log in and set one up; your API tokens work again after that",
        ));
    }
    if kind == "login" && now - last_used >= idle_limit {
        return Err(AppError::new(
            ErrorCode::Unauthenticated,
            "your login timed out after inactivity; log in again",
        ));
    }
    if now - last_used >= 30 {
        sqlx::query("UPDATE auth_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(now)
            .bind(&id)
            .execute(&state.store.pool)
            .await?;
    }
    let stage = parse_stage(&row.try_get::<String, _>("stage")?)
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("bad token stage")))?;
    let via = if kind == "api" {
        Via::ApiToken {
            read_only: row.try_get::<i64, _>("read_only")? != 0,
            data_only: row.try_get::<i64, _>("data_only")? != 0,
        }
    } else {
        Via::Login
    };
    Ok(Caller {
        user_id: row.try_get("user_id")?,
        account_id: row.try_get("account_id")?,
        username: row.try_get("username")?,
        role: row
            .try_get::<String, _>("role")?
            .parse()
            .map_err(|_| AppError::internal(anyhow::anyhow!("bad role")))?,
        token_id: id,
        via,
        stage,
        source,
    })
}

/// Creates a login token for a user at a stage, inside a transaction.
pub async fn issue_login_token(
    tx: &mut Tx<'_>,
    user: &UserRow,
    settings: &AccountSettings,
    stage: LoginStage,
    now: i64,
) -> AppResult<LoginResponse> {
    let token = secret::new_token("dbs_");
    let expires_at = if stage == LoginStage::Complete {
        now + i64::from(settings.login_absolute_hours) * 3600
    } else {
        now + PENDING_SECS
    };
    sqlx::query(
        "INSERT INTO auth_tokens (id, token_hash, account_id, user_id, kind, stage, created_at, last_used_at, expires_at)
         VALUES ($1, $2, $3, $4, 'login', $5, $6, $6, $7)",
    )
    .bind(secret::new_id())
    .bind(secret::token_hash(&token))
    .bind(&user.account_id)
    .bind(&user.id)
    .bind(stage_str(stage))
    .bind(now)
    .bind(expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(LoginResponse {
        token,
        stage,
        expires_at: crate::clock::from_unix(expires_at),
    })
}

/// Revokes every token (logins and API tokens) of a user.
pub async fn revoke_all(tx: &mut Tx<'_>, user_id: &str, now: i64) -> AppResult<()> {
    sqlx::query("UPDATE auth_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn revoke_token(tx: &mut Tx<'_>, token_id: &str, now: i64) -> AppResult<()> {
    sqlx::query("UPDATE auth_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL")
        .bind(now)
        .bind(token_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Where a user whose password (and second factor, if any) checked out goes next.
pub fn next_stage(user: &UserRow, settings: &AccountSettings, now: i64) -> LoginStage {
    let expiry = i64::from(settings.password_policy.expiry_days) * 86_400;
    // Users made by single sign-on have no password to change.
    let has_password = user.password_hash != crate::sso::users::NO_PASSWORD;
    if expiry > 0 && has_password && now >= user.password_changed_at + expiry {
        LoginStage::PasswordChangeRequired
    } else if settings.require_totp && user.totp_secret.is_none() {
        LoginStage::TotpEnrollmentRequired
    } else {
        LoginStage::Complete
    }
}

/// What counting a failed attempt did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Counted; the user is not locked.
    Counted,
    /// This failure reached the threshold and locked the user.
    LockedNow,
    /// The user was already locked (by a concurrent attempt): not counted.
    AlreadyLocked,
}

/// Counts a failed attempt in SQL (`failed_logins + 1 … RETURNING`), so
/// concurrent failures all count; the one that reaches the account's
/// threshold locks the user, tells the admins and puts it on the record.
/// Failures while locked are not counted (one lockout, however many arrive).
pub async fn register_failure(
    tx: &mut Tx<'_>,
    user: &UserRow,
    settings: &AccountSettings,
    now: i64,
    source: &str,
) -> AppResult<Failure> {
    let failures: Option<i64> = sqlx::query_scalar(
        "UPDATE users SET failed_logins = failed_logins + 1
         WHERE id = $1 AND (locked_until IS NULL OR locked_until <= $2) RETURNING failed_logins",
    )
    .bind(&user.id)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(failures) = failures else {
        return Ok(Failure::AlreadyLocked);
    };
    if failures < i64::from(settings.lockout_threshold) {
        return Ok(Failure::Counted);
    }
    let until = now + i64::from(settings.lockout_minutes) * 60;
    sqlx::query("UPDATE users SET failed_logins = 0, locked_until = $1 WHERE id = $2")
        .bind(until)
        .bind(&user.id)
        .execute(&mut **tx)
        .await?;
    let message = format!(
        "User {} was locked for {} minutes after {} failed logins (last from {source}).",
        user.username, settings.lockout_minutes, failures
    );
    crate::notifications::add(tx, &user.account_id, "lockout", &message, now).await?;
    crate::outbox::producers::user_lockout(
        tx,
        user,
        failures,
        settings.lockout_minutes,
        source,
        now,
    )
    .await?;
    let ev = Event::new(&user.account_id, "system", "user.lockout", &format!("user:{}", user.id))
        .source(source)
        .details(serde_json::json!({ "username": user.username, "failures": failures, "minutes": settings.lockout_minutes }));
    audit::append(tx, now, &ev).await?;
    Ok(Failure::LockedNow)
}

/// Clears the failure count after a complete login, unless a concurrent
/// failure locked the user meanwhile (then false: the login must fail).
async fn clear_failures(tx: &mut Tx<'_>, user_id: &str, now: i64) -> AppResult<bool> {
    let r = sqlx::query(
        "UPDATE users SET failed_logins = 0, locked_until = NULL
         WHERE id = $1 AND (locked_until IS NULL OR locked_until <= $2)",
    )
    .bind(user_id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Marks a TOTP time step used, only if it is later than the last used one,
/// in one conditional update: of concurrent logins with the same code,
/// exactly one gets true.
async fn use_totp_step(tx: &mut Tx<'_>, user_id: &str, step: i64) -> AppResult<bool> {
    let r =
        sqlx::query("UPDATE users SET totp_last_step = $1 WHERE id = $2 AND totp_last_step < $1")
            .bind(step)
            .bind(user_id)
            .execute(&mut **tx)
            .await?;
    Ok(r.rows_affected() == 1)
}

/// Revokes the login tokens of the account's users who have no second factor
/// (when TOTP becomes mandatory), except `keep` (the admin's own current
/// login that made the change). Returns how many were revoked.
pub async fn revoke_logins_without_totp(
    tx: &mut Tx<'_>,
    account_id: &str,
    keep: &str,
    now: i64,
) -> AppResult<u64> {
    let r = sqlx::query(
        "UPDATE auth_tokens SET revoked_at = $1
         WHERE account_id = $2 AND kind = 'login' AND revoked_at IS NULL AND id <> $3
           AND user_id IN (SELECT id FROM users WHERE account_id = $2 AND totp_secret IS NULL)",
    )
    .bind(now)
    .bind(account_id)
    .bind(keep)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected())
}

/// Password login. Unknown account, unknown user, wrong password, disabled and
/// locked users all get the same error after the same argon2 work.
pub async fn login(state: &AppState, req: &LoginRequest, source: &str) -> AppResult<LoginResponse> {
    let r = login_inner(state, req, source).await;
    if matches!(&r, Err(e) if e.code == ErrorCode::LoginFailed) {
        metrics::counter!("logins_total", "result" => "failed").increment(1);
    }
    r
}

async fn login_inner(
    state: &AppState,
    req: &LoginRequest,
    source: &str,
) -> AppResult<LoginResponse> {
    // A place in the hashing queue first: a login the pool cannot take is
    // refused as busy before it reads or writes anything.
    let place = crate::password::Hashing::global().place()?;
    let now = state.now();
    let sane = |s: &str, max: usize| !s.is_empty() && s.len() <= max;
    if !sane(&req.account, 256)
        || !sane(&req.username, 256)
        || req.password.len() > crate::password::MAX_PASSWORD_LEN
    {
        place.verify(&req.password, &state.dummy_hash).await?;
        return Err(AppError::login_failed());
    }
    let account = sqlx::query(&format!(
        "SELECT {} FROM accounts WHERE name = $1",
        records::ACCOUNT_COLS
    ))
    .bind(&req.account)
    .fetch_optional(&state.store.pool)
    .await?
    .map(|r| records::account_from(&r))
    .transpose()?;
    let user = match &account {
        Some(a) => sqlx::query(&format!(
            "SELECT {} FROM users WHERE account_id = $1 AND username = $2",
            records::USER_COLS
        ))
        .bind(&a.id)
        .bind(&req.username)
        .fetch_optional(&state.store.pool)
        .await?
        .map(|r| records::user_row(&r))
        .transpose()?,
        None => None,
    };
    let (Some(account), Some(user)) = (account, user) else {
        place.verify(&req.password, &state.dummy_hash).await?;
        let chain = state_chain_for_unknown(&req.account, state).await?;
        let ev = Event::new(&chain, "anonymous", "login.failed", "-")
            .result("failed")
            .source(source)
            .details(serde_json::json!({ "account": truncate(&req.account), "username": truncate(&req.username), "reason": "unknown user" }));
        audit::record(&state.store, now, &ev).await?;
        return Err(AppError::login_failed());
    };
    let settings = account.settings;
    // Hash first, whatever the user's state: equal work for every failure.
    // Off the async workers, at most a few at once (`password::Hashing`).
    let password_ok = place.verify(&req.password, &user.password_hash).await?;
    let actor = format!("user:{}", user.id);
    let fail = |reason: &str, action: &str| {
        Event::new(&user.account_id, &actor, action, &actor)
            .result("failed")
            .source(source)
            .details(serde_json::json!({ "username": user.username, "reason": reason }))
    };
    let mut tx = state.store.begin().await?;
    // A first look at the state read before hashing; the counting below
    // decides again in SQL, so concurrent attempts cannot slip past a lockout.
    if user.disabled {
        audit::append(&mut tx, now, &fail("user disabled", "login.failed")).await?;
        tx.commit().await?;
        return Err(AppError::login_failed());
    }
    if user.locked_until.is_some_and(|t| t > now) {
        audit::append(&mut tx, now, &fail("user locked", "login.locked")).await?;
        tx.commit().await?;
        return Err(AppError::login_failed());
    }
    if !password_ok {
        let f = register_failure(&mut tx, &user, &settings, now, source).await?;
        let ev = match f {
            Failure::AlreadyLocked => fail("user locked", "login.locked"),
            _ => fail("wrong password", "login.failed"),
        };
        audit::append(&mut tx, now, &ev).await?;
        tx.commit().await?;
        return Err(AppError::login_failed());
    }
    // Single sign-on required: the break-glass admin alone still logs in with a
    // password, on the record and with the admins told. Everyone else gets the
    // failure a wrong password gets (no hint that this one was right); the login
    // page learns that SSO is required from `/sso/provider`.
    let break_glass = match crate::sso::users::password_login(&mut tx, &user).await? {
        crate::sso::users::PasswordLogin::Allowed => false,
        crate::sso::users::PasswordLogin::BreakGlass => true,
        crate::sso::users::PasswordLogin::Refused => {
            audit::append(
                &mut tx,
                now,
                &fail("single sign-on required", "login.failed"),
            )
            .await?;
            tx.commit().await?;
            return Err(AppError::login_failed());
        }
    };
    let stage = match (&user.totp_secret, &req.totp) {
        (Some(secret), Some(code)) => {
            let secret = state
                .store
                .unseal(&crate::sealed::totp_context(&user.id, false), secret)?;
            let used = match crate::totp::check(&secret, code, now, user.totp_last_step) {
                // Of concurrent logins with the same code only one marks its step.
                Some(step) => use_totp_step(&mut tx, &user.id, step).await?,
                None => false,
            };
            if !used {
                let f = register_failure(&mut tx, &user, &settings, now, source).await?;
                let ev = match f {
                    Failure::AlreadyLocked => fail("user locked", "login.locked"),
                    _ => fail("wrong second factor", "login.failed"),
                };
                audit::append(&mut tx, now, &ev).await?;
                tx.commit().await?;
                return Err(AppError::login_failed());
            }
            next_stage(&user, &settings, now)
        }
        (Some(_), None) => LoginStage::TotpRequired,
        (None, _) => next_stage(&user, &settings, now),
    };
    // Only a login through every factor clears the failure count; otherwise
    // a known password would allow unlimited guesses at the second factor.
    if stage != LoginStage::TotpRequired && !clear_failures(&mut tx, &user.id, now).await? {
        // Locked by a concurrent failure after the first look above.
        drop(tx);
        audit::record(&state.store, now, &fail("user locked", "login.locked")).await?;
        return Err(AppError::login_failed());
    }
    let resp = issue_login_token(&mut tx, &user, &settings, stage, now).await?;
    if break_glass {
        crate::sso::users::record_break_glass(&mut tx, &user, source, now).await?;
    }
    metrics::counter!("logins_total", "result" => "ok").increment(1);
    let ev = Event::new(&user.account_id, &actor, "login.ok", &actor)
        .source(source)
        .details(serde_json::json!({ "username": user.username, "stage": stage_str(stage) }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(resp)
}

/// Failed logins naming an existing account go on that account's chain;
/// others on the system chain.
async fn state_chain_for_unknown(account: &str, state: &AppState) -> AppResult<String> {
    let id: Option<String> = sqlx::query_scalar("SELECT id FROM accounts WHERE name = $1")
        .bind(account)
        .fetch_optional(&state.store.pool)
        .await?;
    Ok(id.unwrap_or_else(|| audit::SYSTEM_ACCOUNT.to_string()))
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Second step of a login with TOTP: the pending token plus a code gives a new token.
pub async fn finish_totp(
    state: &AppState,
    caller: &Caller,
    code: &str,
) -> AppResult<LoginResponse> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let user = records::user(&mut tx, &caller.account_id, &caller.user_id).await?;
    let account = records::account(&mut tx, &caller.account_id).await?;
    let secret = user
        .totp_secret
        .as_deref()
        .ok_or_else(|| AppError::conflict("no second factor is set up"))?;
    let secret = state
        .store
        .unseal(&crate::sealed::totp_context(&user.id, false), secret)?;
    let mut locked = user.locked_until.is_some_and(|t| t > now);
    let used = match crate::totp::check(&secret, code, now, user.totp_last_step) {
        // Of concurrent second steps with the same code only one marks its step.
        Some(step) if !locked => use_totp_step(&mut tx, &user.id, step).await?,
        _ => false,
    };
    // A lock taken by a concurrent failure since the read above refuses too.
    let ok = used && {
        let cleared = clear_failures(&mut tx, &user.id, now).await?;
        locked = !cleared;
        cleared
    };
    let actor = caller.actor();
    if !ok {
        if !locked
            && register_failure(&mut tx, &user, &account.settings, now, &caller.source).await?
                == Failure::AlreadyLocked
        {
            locked = true;
        }
        revoke_token(&mut tx, &caller.token_id, now).await?;
        let reason = if locked {
            "user locked"
        } else {
            "wrong second factor"
        };
        let ev = Event::new(&caller.account_id, &actor, "login.failed", &actor)
            .result("failed")
            .source(&caller.source)
            .details(serde_json::json!({ "username": user.username, "reason": reason }));
        audit::append(&mut tx, now, &ev).await?;
        tx.commit().await?;
        return Err(AppError::login_failed());
    }
    revoke_token(&mut tx, &caller.token_id, now).await?;
    let stage = next_stage(&user, &account.settings, now);
    let resp = issue_login_token(&mut tx, &user, &account.settings, stage, now).await?;
    let ev = Event::new(&caller.account_id, &actor, "login.totp_ok", &actor)
        .source(&caller.source)
        .details(serde_json::json!({ "username": user.username, "stage": stage_str(stage) }));
    audit::append(&mut tx, now, &ev).await?;
    tx.commit().await?;
    Ok(resp)
}
