//! Loading domain records from rows, always scoped by account.

use crate::clock::from_unix;
use crate::error::{AppError, AppResult};
use drawbridge_proto::api::{Account, Device, DeviceStatus, User};
use drawbridge_proto::{AccountSettings, Name, Role, Username};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};

fn corrupt(what: &str) -> AppError {
    AppError::internal(anyhow::anyhow!("stored {what} does not parse"))
}

pub fn json_col<T: serde::de::DeserializeOwned>(row: &AnyRow, col: &str) -> AppResult<T> {
    let s: String = row.try_get(col)?;
    serde_json::from_str(&s).map_err(|_| corrupt(col))
}

pub const ACCOUNT_COLS: &str = "id, name, settings, created_at";

pub fn account_from(row: &AnyRow) -> AppResult<Account> {
    Ok(Account {
        id: row.try_get("id")?,
        name: Name::try_from(row.try_get::<String, _>("name")?).map_err(|_| corrupt("name"))?,
        settings: json_col::<AccountSettings>(row, "settings")?,
        created_at: from_unix(row.try_get("created_at")?),
    })
}

pub async fn account(conn: &mut AnyConnection, id: &str) -> AppResult<Account> {
    let row = sqlx::query(&format!(
        "SELECT {ACCOUNT_COLS} FROM accounts WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| AppError::not_found("account"))?;
    account_from(&row)
}

/// Everything of a user row, including secrets; never serialised as is.
#[derive(Debug, Clone)]
pub struct UserRow {
    pub id: String,
    pub account_id: String,
    pub username: String,
    pub role: Role,
    pub password_hash: String,
    pub password_changed_at: i64,
    pub totp_secret: Option<String>,
    pub totp_pending_secret: Option<String>,
    pub totp_last_step: i64,
    pub disabled: bool,
    pub failed_logins: i64,
    pub locked_until: Option<i64>,
    pub created_at: i64,
}

pub const USER_COLS: &str = "id, account_id, username, role, password_hash, password_changed_at, totp_secret, totp_pending_secret, totp_last_step, disabled, failed_logins, locked_until, created_at";

pub fn user_row(row: &AnyRow) -> AppResult<UserRow> {
    Ok(UserRow {
        id: row.try_get("id")?,
        account_id: row.try_get("account_id")?,
        username: row.try_get("username")?,
        role: row
            .try_get::<String, _>("role")?
            .parse()
            .map_err(|_| corrupt("role"))?,
        password_hash: row.try_get("password_hash")?,
        password_changed_at: row.try_get("password_changed_at")?,
        totp_secret: row.try_get("totp_secret")?,
        totp_pending_secret: row.try_get("totp_pending_secret")?,
        totp_last_step: row.try_get("totp_last_step")?,
        disabled: row.try_get::<i64, _>("disabled")? != 0,
        failed_logins: row.try_get("failed_logins")?,
        locked_until: row.try_get("locked_until")?,
        created_at: row.try_get("created_at")?,
    })
}

impl UserRow {
    pub fn to_api(&self, now: i64) -> User {
        User {
            id: self.id.clone(),
            username: Username::try_from(self.username.clone())
                .unwrap_or_else(|_| Username::try_from("invalid").expect("static name")),
            role: self.role,
            disabled: self.disabled,
            totp_enabled: self.totp_secret.is_some(),
            locked_until: self.locked_until.filter(|t| *t > now).map(from_unix),
            password_changed_at: from_unix(self.password_changed_at),
            created_at: from_unix(self.created_at),
        }
    }
}

/// A user of the given account, or not found (also for other accounts' users).
pub async fn user(conn: &mut AnyConnection, account_id: &str, id: &str) -> AppResult<UserRow> {
    let row = sqlx::query(&format!(
        "SELECT {USER_COLS} FROM users WHERE id = $1 AND account_id = $2"
    ))
    .bind(id)
    .bind(account_id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| AppError::not_found("user"))?;
    user_row(&row)
}

pub const DEVICE_COLS: &str = "id, account_id, name, serial, lan_subnets, nat, firewall, enrolled, pending_approval, online, switch_on, agent_version, last_seen, public_endpoint, created_at, onsite_approval, disabled, archived, web_services, region";

pub fn device_from(row: &AnyRow) -> AppResult<Device> {
    Ok(Device {
        id: row.try_get("id")?,
        name: Name::try_from(row.try_get::<String, _>("name")?).map_err(|_| corrupt("name"))?,
        serial: row.try_get("serial")?,
        lan_subnets: json_col(row, "lan_subnets")?,
        nat: json_col(row, "nat")?,
        firewall: json_col(row, "firewall")?,
        status: DeviceStatus {
            enrolled: row.try_get::<i64, _>("enrolled")? != 0,
            pending_approval: row.try_get::<i64, _>("pending_approval")? != 0,
            online: row.try_get::<i64, _>("online")? != 0,
            switch_on: row.try_get::<i64, _>("switch_on")? != 0,
            agent_version: row.try_get("agent_version")?,
            last_seen: row.try_get::<Option<i64>, _>("last_seen")?.map(from_unix),
            public_endpoint: row.try_get("public_endpoint")?,
            disabled: row.try_get::<i64, _>("disabled")? != 0,
            archived: row.try_get::<i64, _>("archived")? != 0,
        },
        created_at: from_unix(row.try_get("created_at")?),
        onsite_approval: row.try_get::<i64, _>("onsite_approval")? != 0,
        web_services: json_col(row, "web_services")?,
        region: row
            .try_get::<Option<String>, _>("region")?
            .map(|r| drawbridge_proto::Region::try_from(r).map_err(|_| corrupt("region")))
            .transpose()?,
    })
}

pub async fn device(conn: &mut AnyConnection, account_id: &str, id: &str) -> AppResult<Device> {
    let row = sqlx::query(&format!(
        "SELECT {DEVICE_COLS} FROM devices WHERE id = $1 AND account_id = $2"
    ))
    .bind(id)
    .bind(account_id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| AppError::not_found("device"))?;
    device_from(&row)
}
