//! First run: the one-time setup token and the first account with its admin.
//! No default credentials exist; the first admin is created either through the
//! setup link the server prints, or by `drawbridge-server init`.

use crate::audit::{self, Event};
use crate::error::{AppError, AppResult};
use crate::records::{self, UserRow};
use crate::secret;
use crate::state::AppState;
use drawbridge_proto::api::{Account, SetupResponse};
use drawbridge_proto::{AccountSettings, ErrorCode, Name, Role, Username};

/// How long a setup link stays valid.
pub const SETUP_TTL: i64 = 24 * 3600;

pub async fn has_accounts(state: &AppState) -> AppResult<bool> {
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
        .fetch_one(&state.store.pool)
        .await?;
    Ok(n > 0)
}

/// A fresh setup token (only its hash is stored). Older unused ones stay valid until they expire.
pub async fn new_setup_token(state: &AppState) -> AppResult<String> {
    let token = secret::new_token("dbx_");
    let now = state.now();
    sqlx::query(
        "INSERT INTO setup_tokens (token_hash, created_at, expires_at) VALUES ($1, $2, $3)",
    )
    .bind(secret::token_hash(&token))
    .bind(now)
    .bind(now + SETUP_TTL)
    .execute(&state.store.pool)
    .await?;
    Ok(token)
}

/// Consumes a setup token and creates the account and its admin, atomically.
pub async fn setup_with_token(
    state: &AppState,
    token: &str,
    account: &Name,
    username: &Username,
    password: &str,
    source: &str,
) -> AppResult<SetupResponse> {
    let now = state.now();
    let mut tx = state.store.begin().await?;
    let used = sqlx::query(
        "UPDATE setup_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1",
    )
    .bind(now)
    .bind(secret::token_hash(token))
    .execute(&mut *tx)
    .await?;
    if used.rows_affected() != 1 {
        return Err(AppError::invalid_code());
    }
    let resp = create_account(&mut tx, now, account, username, password, source).await?;
    tx.commit().await?;
    Ok(resp)
}

/// Creates an account with default settings and its first admin.
pub async fn create_account(
    tx: &mut crate::db::Tx<'_>,
    now: i64,
    account: &Name,
    username: &Username,
    password: &str,
    source: &str,
) -> AppResult<SetupResponse> {
    let settings = AccountSettings::default();
    crate::password::check_policy(&settings.password_policy, username.as_str(), password)
        .map_err(|m| AppError::new(ErrorCode::PasswordPolicy, m))?;
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

/// Inserts a user whose password already passed the policy check.
pub async fn insert_user(
    tx: &mut crate::db::Tx<'_>,
    account_id: &str,
    username: &Username,
    role: Role,
    password: &str,
    now: i64,
) -> AppResult<UserRow> {
    let id = secret::new_id();
    let hash = crate::password::hash(password);
    let r = sqlx::query(
        "INSERT INTO users (id, account_id, username, role, password_hash, password_changed_at, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $6)",
    )
    .bind(&id)
    .bind(account_id)
    .bind(username.as_str())
    .bind(role.as_str())
    .bind(&hash)
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
    .bind(&hash)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    records::user(tx, account_id, &id).await
}
