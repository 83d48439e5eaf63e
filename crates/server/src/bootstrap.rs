//! First run: the one-time setup token and the first account with its admin.
//! No default credentials exist; the first admin is created either through the
//! setup link the server prints, or by `drawbridge-server init`. That link dies
//! as soon as any account exists; links for further accounts are made on
//! purpose (`drawbridge-server setup-link`) and expire within an hour.

use crate::audit::{self, Event};
use crate::error::{AppError, AppResult};
use crate::records::{self, UserRow};
use crate::secret;
use crate::state::AppState;
use drawbridge_proto::api::{Account, SetupResponse};
use drawbridge_proto::{AccountSettings, ErrorCode, Name, Role, Username};

/// How long a setup link for the first account stays valid.
pub const SETUP_TTL: i64 = 24 * 3600;
/// How long a setup link for a further account stays valid.
pub const MORE_SETUP_TTL: i64 = 3600;

/// Setup tokens for a further account start with this (first-account ones with
/// `dbx_`); their stored hash carries [`MORE_KEY`] in front, so SQL can tell the
/// two kinds apart without a schema change. The prefix is part of what is hashed,
/// so nobody can turn one kind into the other.
const MORE_PREFIX: &str = "dbxa_";
const MORE_KEY: &str = "more:";

/// What a setup link creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetupKind {
    /// The first account of a fresh server; dies as soon as any account exists.
    FirstAccount,
    /// Another account next to existing ones (`drawbridge-server setup-link`).
    AnotherAccount,
}

/// A new setup link's token, its kind and when it expires (unix seconds).
pub struct SetupLink {
    pub token: String,
    pub kind: SetupKind,
    pub expires_at: i64,
}

pub async fn has_accounts(state: &AppState) -> AppResult<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
        .fetch_one(&state.store.pool)
        .await?;
    Ok(n > 0)
}

/// A fresh setup token (only its hash is stored): for the first account while
/// none exists, else for another account (valid [`MORE_SETUP_TTL`]).
pub async fn new_setup_token(state: &AppState) -> AppResult<String> {
    Ok(new_setup_link(state).await?.token)
}

/// [`new_setup_token`], saying which kind it made and until when it is valid.
pub async fn new_setup_link(state: &AppState) -> AppResult<SetupLink> {
    let now = state.now();
    let (kind, token, stored, ttl) = if has_accounts(state).await? {
        let token = secret::new_token(MORE_PREFIX);
        let stored = format!("{MORE_KEY}{}", secret::token_hash(&token));
        (SetupKind::AnotherAccount, token, stored, MORE_SETUP_TTL)
    } else {
        let token = secret::new_token("dbx_");
        let stored = secret::token_hash(&token);
        (SetupKind::FirstAccount, token, stored, SETUP_TTL)
    };
    sqlx::query(
        "INSERT INTO setup_tokens (token_hash, created_at, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(stored)
    .bind(now)
    .bind(now + ttl)
    .execute(&state.store.pool)
    .await?;
    Ok(SetupLink {
        token,
        kind,
        expires_at: now + ttl,
    })
}

/// Consumes a setup token and creates the account and its admin, atomically.
/// A first-account token works only while no account exists: creating any
/// account (here or with `init`) uses up every first-account token.
pub async fn setup_with_token(
    state: &AppState,
    token: &str,
    account: &Name,
    username: &Username,
    password: &str,
    source: &str,
) -> AppResult<SetupResponse> {
    // Hashed before the write transaction: no argon2 work holds it.
    let password = new_password(
        &AccountSettings::default().password_policy,
        username,
        password,
    )
    .await?;
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let used = if token.starts_with(MORE_PREFIX) {
        sqlx::query(
            "UPDATE setup_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1",
        )
        .bind(now)
        .bind(format!("{MORE_KEY}{}", secret::token_hash(token)))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1
    } else {
        // Uses up every first-account token at once, provided this one is
        // valid: of two first-account setups at the same moment, the second
        // finds the tokens used (PostgreSQL re-checks the rows it waited for).
        let used = sqlx::query(
            "UPDATE setup_tokens SET used_at = $1 WHERE used_at IS NULL AND token_hash NOT LIKE 'more:%'
               AND EXISTS (SELECT 1 FROM setup_tokens t WHERE t.token_hash = $2 AND t.used_at IS NULL AND t.expires_at > $1)",
        )
        .bind(now)
        .bind(secret::token_hash(token))
        .execute(&mut *tx)
        .await?
        .rows_affected()
            >= 1;
        let accounts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
            .fetch_one(&mut *tx)
            .await?;
        if used && accounts > 0 {
            // An account exists (made before first-account tokens were used up
            // on creation): the link is dead; keep it used.
            tx.commit().await?;
            return Err(AppError::invalid_code());
        }
        used
    };
    if !used {
        return Err(AppError::invalid_code());
    }
    let resp = create_account(&mut tx, now, account, username, &password, source).await?;
    tx.commit().await?;
    Ok(resp)
}

/// A new user's password that passed the policy, hashed: made with
/// [`new_password`] before the write transaction, so that no argon2 work runs
/// inside it (on SQLite it is the one writer).
pub struct NewUserPassword(String);

/// Checks a new user's password against the policy and hashes it (off the
/// async workers, in the bounded `password::Hashing` pool).
pub async fn new_password(
    policy: &drawbridge_proto::PasswordPolicy,
    username: &Username,
    password: &str,
) -> AppResult<NewUserPassword> {
    crate::password::check_policy(policy, username.as_str(), password)
        .map_err(|m| AppError::new(ErrorCode::PasswordPolicy, m))?;
    Ok(NewUserPassword(
        crate::password::hash_async(password).await?,
    ))
}

/// Creates an account with default settings and its first admin, whose
/// password [`new_password`] checked against the default policy.
pub async fn create_account(
    tx: &mut crate::db::Tx<'_>,
    now: i64,
    account: &Name,
    username: &Username,
    password: &NewUserPassword,
    source: &str,
) -> AppResult<SetupResponse> {
    let settings = AccountSettings::default();
    let account_id = secret::new_id();
    let r = sqlx::query(
        "INSERT INTO accounts (id, name, settings, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(&account_id)
    .bind(account.as_str())
    .bind(serde_json::to_string(&settings).map_err(AppError::internal)?)
    .bind(now)
    .execute(&mut **tx)
    .await;
    if let Err(e) = r {
        return Err(if crate::db::is_unique_violation(&e) {
            AppError::conflict("an account with this name exists")
        } else {
            e.into()
        });
    }
    let user = insert_user(tx, &account_id, username, Role::Admin, password, now).await?;
    // The first account exists now: every link printed for it dies.
    sqlx::query(
        "UPDATE setup_tokens SET used_at = $1 WHERE used_at IS NULL AND token_hash NOT LIKE 'more:%'",
    )
    .bind(now)
    .execute(&mut **tx)
    .await?;
    audit::ensure_chain(tx, &account_id).await?;
    let ev = Event::new(
        &account_id,
        "system",
        "account.create",
        &format!("account:{account_id}"),
    )
    .source(source)
    .details(serde_json::json!({ "name": account.as_str(), "admin": username.as_str() }));
    audit::append(tx, now, &ev).await?;
    let ev = Event::new(
        &account_id,
        "system",
        "user.create",
        &format!("user:{}", user.id),
    )
    .source(source)
    .details(serde_json::json!({ "username": username.as_str(), "role": "admin" }));
    audit::append(tx, now, &ev).await?;
    Ok(SetupResponse {
        account: Account {
            id: account_id,
            name: account.clone(),
            settings,
            created_at: crate::clock::from_unix(now),
        },
        admin: user.to_api(now),
    })
}

/// Inserts a user with a password made by [`new_password`].
pub async fn insert_user(
    tx: &mut crate::db::Tx<'_>,
    account_id: &str,
    username: &Username,
    role: Role,
    password: &NewUserPassword,
    now: i64,
) -> AppResult<UserRow> {
    let id = secret::new_id();
    let hash = &password.0;
    let r = sqlx::query(
        "INSERT INTO users (id, account_id, username, role, password_hash, password_changed_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(&id)
    .bind(account_id)
    .bind(username.as_str())
    .bind(role.as_str())
    .bind(hash)
    .bind(now)
    .execute(&mut **tx)
    .await;
    if let Err(e) = r {
        return Err(if crate::db::is_unique_violation(&e) {
            AppError::conflict("a user with this name exists in the account")
        } else {
            e.into()
        });
    }
    sqlx::query(
        "INSERT INTO password_history (user_id, password_hash, created_at) VALUES ($1, $2, $3)",
    )
    .bind(&id)
    .bind(hash)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    records::user(tx, account_id, &id).await
}

/// The `server_secrets` row (public, not sealed) where a running server notes
/// the address users reach it at, so that `setup-link` names the real one.
const PUBLIC_URL_ROW: &str = "running_public_url";

/// Notes the running server's public URL (each start; the last one wins).
pub async fn record_public_url(state: &AppState, url: &str) -> AppResult<()> {
    sqlx::query(
        "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3)
         ON CONFLICT (name) DO UPDATE SET value = excluded.value, created_at = excluded.created_at",
    )
    .bind(PUBLIC_URL_ROW)
    .bind(url)
    .bind(state.now())
    .execute(&state.store.pool)
    .await?;
    Ok(())
}

/// The public URL the last started server noted, if any.
pub async fn recorded_public_url(state: &AppState) -> AppResult<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
            .bind(PUBLIC_URL_ROW)
            .fetch_optional(&state.store.pool)
            .await?,
    )
}
