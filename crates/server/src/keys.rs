//! The control plane's relay-token signing key, kept in the database so that
//! every replica signs with the same key; relays hold only its public half.

use crate::db::Store;
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use drawbridge_relay::SigningKey;

/// Its `server_secrets` row (sealed, see [`crate::sealed`]).
pub const RELAY_KEY_NAME: &str = "relay_signing_key";

/// Loads the key, creating it once (race-safe across replicas).
pub async fn relay_signing_key(store: &Store, now: i64) -> anyhow::Result<SigningKey> {
    let context = crate::sealed::server_secret_context(RELAY_KEY_NAME);
    let load = || async {
        let v: Option<String> =
            sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
                .bind(RELAY_KEY_NAME)
                .fetch_optional(&store.pool)
                .await?;
        anyhow::Ok(v)
    };
    if load().await?.is_none() {
        let (_, pkcs8) = SigningKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
        sqlx::query(
            "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(RELAY_KEY_NAME)
        .bind(store.seal(&context, &STANDARD.encode(&pkcs8)))
        .bind(now)
        .execute(&store.pool)
        .await?;
    }
    let v = load().await?.context("relay key vanished after creation")?;
    let v = store.unseal(&context, &v)?;
    let pkcs8 = STANDARD
        .decode(v)
        .context("stored relay key is not base64")?;
    SigningKey::from_pkcs8(&pkcs8).map_err(|e| anyhow::anyhow!("stored relay key: {e}"))
}

/// The public half as base64, for `drawbridge-server relay --verifying-key`.
pub fn verifying_key_b64(key: &SigningKey) -> String {
    STANDARD.encode(key.verifying_key().as_bytes())
}

pub fn parse_verifying_key(b64: &str) -> anyhow::Result<drawbridge_relay::VerifyingKey> {
    let bytes = STANDARD
        .decode(b64.trim())
        .context("the verifying key is not base64")?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("the verifying key must be 32 bytes"))?;
    Ok(drawbridge_relay::VerifyingKey::from_bytes(arr))
}
