//! The database: one connection pool over SQLite or PostgreSQL, one set of
//! migrations, portable SQL everywhere (numbered `$n` parameters work on both).

use crate::sealed::{self, SecretsKey};
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, ConnectOptions};
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Store {
    pub pool: AnyPool,
    pub backend: Backend,
    /// The URL it was opened with (replicas' listeners connect with it too).
    pub url: String,
    /// Seals the secrets the database holds ([`Store::open_sealed`]); without it they
    /// are written as they are (tests and tools that hold no secrets).
    pub secrets: Option<std::sync::Arc<SecretsKey>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Sealed(String),
}

pub type Tx<'a> = sqlx::Transaction<'a, sqlx::Any>;

/// The `server_secrets` row that proves which secrets key sealed the database.
const KEY_CHECK: &str = "secrets_key_check";

impl Store {
    /// Connects and brings the schema up to date.
    pub async fn open(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(redact(url)));
        };
        let pool = match backend {
            Backend::Sqlite => {
                // One writer at a time is SQLite's model anyway; a single
                // connection also makes every transaction strictly serial, so
                // read-then-write transactions never meet SQLITE_BUSY.
                let url = if url.contains('?') {
                    url.to_string()
                } else {
                    format!("{url}?mode=rwc")
                };
                let opts = AnyConnectOptions::from_str(&url)?.disable_statement_logging();
                AnyPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            for pragma in [
                                "PRAGMA foreign_keys = ON",
                                "PRAGMA journal_mode = WAL",
                                "PRAGMA busy_timeout = 10000",
                            ] {
                                sqlx::query(pragma).execute(&mut *conn).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(opts)
                    .await?
            }
            Backend::Postgres => {
                let opts = AnyConnectOptions::from_str(url)?.disable_statement_logging();
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(opts)
                    .await?
            }
        };
        sqlx::migrate!("./migrations").run(&pool).await?;
        guard_audit_log(&pool, backend).await?;
        Ok(Store {
            pool,
            backend,
            url: url.to_string(),
            secrets: None,
        })
    }

    /// [`Store::open`], then every secret in the database is sealed with `key`: the
    /// database must have been sealed with the same key (a check value says so), and
    /// secrets written before sealing existed are sealed now.
    pub async fn open_sealed(url: &str, key: SecretsKey) -> Result<Store, StoreError> {
        let mut store = Store::open(url).await?;
        store.secrets = Some(std::sync::Arc::new(key));
        store.check_secrets_key().await?;
        store.seal_plain_secrets().await?;
        Ok(store)
    }

    /// `plaintext` as it is stored at `context` (see [`crate::sealed`]).
    pub fn seal(&self, context: &str, plaintext: &str) -> String {
        match &self.secrets {
            Some(k) => k.seal(context, plaintext.as_bytes()),
            None => plaintext.to_string(),
        }
    }

    /// A value read from `context`, opened if sealed.
    pub fn unseal(&self, context: &str, stored: &str) -> Result<String, StoreError> {
        if !sealed::is_sealed(stored) {
            return Ok(stored.to_string());
        }
        let key = self.secrets.as_ref().ok_or_else(|| {
            StoreError::Sealed(
                "the database's secrets are sealed; this needs the secrets key".into(),
            )
        })?;
        let plain = key
            .open(context, stored)
            .map_err(|e| StoreError::Sealed(format!("{context}: {e}")))?;
        String::from_utf8(plain).map_err(|_| StoreError::Sealed(format!("{context}: not text")))
    }

    /// Bytes as they are stored at `context` (sealed when the store has a
    /// secrets key; otherwise `plain:` and base64).
    pub fn seal_bytes(&self, context: &str, plaintext: &[u8]) -> String {
        use base64::Engine;
        match &self.secrets {
            Some(k) => k.seal(context, plaintext),
            None => format!(
                "plain:{}",
                base64::engine::general_purpose::STANDARD.encode(plaintext)
            ),
        }
    }

    /// Bytes read from `context`, opened if sealed.
    pub fn unseal_bytes(&self, context: &str, stored: &str) -> Result<Vec<u8>, StoreError> {
        use base64::Engine;
        if let Some(b64) = stored.strip_prefix("plain:") {
            return base64::engine::general_purpose::STANDARD
                .decode(b64)
                .map_err(|_| StoreError::Sealed(format!("{context}: malformed")));
        }
        let key = self.secrets.as_ref().ok_or_else(|| {
            StoreError::Sealed(
                "the database's secrets are sealed; this needs the secrets key".into(),
            )
        })?;
        key.open(context, stored)
            .map_err(|e| StoreError::Sealed(format!("{context}: {e}")))
    }

    async fn check_secrets_key(&self) -> Result<(), StoreError> {
        let context = sealed::server_secret_context(KEY_CHECK);
        sqlx::query(
            "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(KEY_CHECK)
        .bind(self.seal(&context, KEY_CHECK))
        .bind(0i64)
        .execute(&self.pool)
        .await?;
        let stored: String = sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
            .bind(KEY_CHECK)
            .fetch_one(&self.pool)
            .await?;
        match self.unseal(&context, &stored) {
            Ok(v) if v == KEY_CHECK => Ok(()),
            _ => Err(StoreError::Sealed(
                "the database's secrets were sealed with another secrets key: give this server \
                 the key file the database was first used with (secrets_key_file; every replica \
                 needs the same one)"
                    .into(),
            )),
        }
    }

    /// Seals every secret again with `new` in one transaction (key rotation): opened
    /// with this store's key, sealed with `new`, the check value too. Every server
    /// must be stopped meanwhile and restarted with the new key file. Returns how many
    /// values were sealed again.
    pub async fn reseal(&self, new: &SecretsKey) -> Result<usize, StoreError> {
        let old = self
            .secrets
            .as_ref()
            .ok_or_else(|| StoreError::Sealed("rotating needs the current secrets key".into()))?;
        let mut tx = self.pool.begin().await?;
        let mut n = 0;
        for slot in secret_slots(&mut tx).await? {
            let plain = if sealed::is_sealed(&slot.value) {
                old.open(&slot.context, &slot.value)
                    .map_err(|e| StoreError::Sealed(format!("{}: {e}", slot.context)))?
            } else if slot.secret {
                slot.value.as_bytes().to_vec()
            } else {
                continue;
            };
            slot.replace(&mut tx, &new.seal(&slot.context, &plain))
                .await?;
            n += 1;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// Seals what was stored before sealing existed (each a compare-and-set, so
    /// replicas starting at once do not race).
    async fn seal_plain_secrets(&self) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for slot in secret_slots(&mut tx).await? {
            if slot.secret && !sealed::is_sealed(&slot.value) {
                let sealed = self.seal(&slot.context, &slot.value);
                slot.replace(&mut tx, &sealed).await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn begin(&self) -> Result<Tx<'static>, sqlx::Error> {
        self.pool.begin().await
    }
}

/// One stored value of the places that hold secrets: every `server_secrets` row,
/// every user's TOTP secrets and every webhook's signing secret.
struct SecretSlot {
    /// `UPDATE … SET value = $1 WHERE key = $2 AND value = $3`.
    update: String,
    key: String,
    value: String,
    /// Where it is stored: the associated data of its sealing.
    context: String,
    /// A secret by its place (sealed when found in the clear); `server_secrets` also
    /// holds public values (the CA certificate).
    secret: bool,
}

impl SecretSlot {
    /// Replaces the value, if it is still the one read (compare-and-set).
    async fn replace(&self, tx: &mut Tx<'_>, value: &str) -> Result<(), StoreError> {
        sqlx::query(&self.update)
            .bind(value)
            .bind(&self.key)
            .bind(&self.value)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

async fn secret_slots(tx: &mut Tx<'_>) -> Result<Vec<SecretSlot>, StoreError> {
    let mut slots = Vec::new();
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT name, value FROM server_secrets")
        .fetch_all(&mut **tx)
        .await?;
    for (name, value) in rows {
        slots.push(SecretSlot {
            update: "UPDATE server_secrets SET value = $1 WHERE name = $2 AND value = $3".into(),
            context: sealed::server_secret_context(&name),
            secret: sealed::SECRET_NAMES.contains(&name.as_str()),
            key: name,
            value,
        });
    }
    for pending in [false, true] {
        let column = if pending {
            "totp_pending_secret"
        } else {
            "totp_secret"
        };
        let rows: Vec<(String, String)> = sqlx::query_as(&format!(
            "SELECT id, {column} FROM users WHERE {column} IS NOT NULL"
        ))
        .fetch_all(&mut **tx)
        .await?;
        for (id, value) in rows {
            slots.push(SecretSlot {
                update: format!("UPDATE users SET {column} = $1 WHERE id = $2 AND {column} = $3"),
                context: sealed::totp_context(&id, pending),
                secret: true,
                key: id,
                value,
            });
        }
    }
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, secret FROM webhooks")
        .fetch_all(&mut **tx)
        .await?;
    for (id, value) in rows {
        slots.push(SecretSlot {
            update: "UPDATE webhooks SET secret = $1 WHERE id = $2 AND secret = $3".into(),
            context: crate::outbox::webhooks::secret_context(&id),
            secret: true,
            key: id,
            value,
        });
    }
    // Single sign-on: providers' client secrets, and logins in flight.
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT account_id, client_secret FROM sso_providers")
            .fetch_all(&mut **tx)
            .await?;
    for (id, value) in rows {
        slots.push(SecretSlot {
            update: "UPDATE sso_providers SET client_secret = $1 WHERE account_id = $2 AND client_secret = $3".into(),
            context: crate::sso::secret_context(&id),
            secret: true,
            key: id,
            value,
        });
    }
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT token_id, refresh_token FROM sso_sessions")
            .fetch_all(&mut **tx)
            .await?;
    for (id, value) in rows {
        slots.push(SecretSlot {
            update: "UPDATE sso_sessions SET refresh_token = $1 WHERE token_id = $2 AND refresh_token = $3".into(),
            context: crate::sso::refresh::context(&id),
            secret: true,
            key: id,
            value,
        });
    }
    let rows: Vec<(String, String)> = sqlx::query_as("SELECT id, secrets FROM sso_flows")
        .fetch_all(&mut **tx)
        .await?;
    for (id, value) in rows {
        slots.push(SecretSlot {
            update: "UPDATE sso_flows SET secrets = $1 WHERE id = $2 AND secrets = $3".into(),
            context: crate::sso::login::flow_context(&id),
            secret: true,
            key: id,
            value,
        });
    }
    Ok(slots)
}

/// Makes the audit log append-only in the database itself, not only in our code:
/// triggers refuse every `UPDATE` and `DELETE` of `audit_log` (and `TRUNCATE` on
/// PostgreSQL). Checked on every start; the statements differ by dialect, so they live
/// here instead of in the shared migrations. (The database's owner can still drop the
/// triggers; the hash chain then still shows what was changed.)
async fn guard_audit_log(pool: &AnyPool, backend: Backend) -> Result<(), sqlx::Error> {
    match backend {
        Backend::Sqlite => {
            for (name, event) in [
                ("audit_log_no_update", "UPDATE"),
                ("audit_log_no_delete", "DELETE"),
            ] {
                sqlx::query(&format!(
                    "CREATE TRIGGER IF NOT EXISTS {name} BEFORE {event} ON audit_log \
                     BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
                ))
                .execute(pool)
                .await?;
            }
        }
        Backend::Postgres => {
            let mut tx = pool.begin().await?;
            // Serialises servers starting at once (CREATE TRIGGER has no IF NOT EXISTS).
            sqlx::query("LOCK TABLE audit_log IN SHARE ROW EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "CREATE OR REPLACE FUNCTION drawbridge_audit_append_only() RETURNS trigger \
                 LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit_log is append-only'; END $$",
            )
            .execute(&mut *tx)
            .await?;
            for (name, timing) in [
                (
                    "audit_log_append_only",
                    "BEFORE UPDATE OR DELETE ON audit_log FOR EACH ROW",
                ),
                (
                    "audit_log_no_truncate",
                    "BEFORE TRUNCATE ON audit_log FOR EACH STATEMENT",
                ),
            ] {
                let exists: i64 = sqlx::query_scalar(
                    "SELECT COUNT(*) FROM pg_trigger \
                     WHERE tgname = $1 AND tgrelid = 'audit_log'::regclass",
                )
                .bind(name)
                .fetch_one(&mut *tx)
                .await?;
                if exists == 0 {
                    sqlx::query(&format!(
                        "CREATE TRIGGER {name} {timing} EXECUTE FUNCTION drawbridge_audit_append_only()"
                    ))
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

/// A database URL with any password removed, for messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// True when the error is a unique-constraint violation (both backends).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(d) => {
            d.is_unique_violation()
                || d.message().contains("UNIQUE constraint failed")
                || d.code().as_deref() == Some("23505")
        }
        _ => false,
    }
}
