//! The control plane's relay-token signing key, kept in the database so that
//! every replica signs with the same key; relays hold only its public half.

use crate::db::Store;
use crate::sealed::{PORTAL_KEY_NAME, RELAY_KEY_NAME};
use anyhow::Context;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use drawbridge_relay::SigningKey;

/// A secret every replica shares: read from `server_secrets` (sealed), made once with
/// `make` when missing (race-safe across replicas: the first insert wins).
pub async fn shared_secret(
    store: &Store,
    name: &str,
    now: i64,
    make: impl FnOnce() -> anyhow::Result<Vec<u8>>,
) -> anyhow::Result<Vec<u8>> {
    let context = crate::sealed::server_secret_context(name);
    let load = || async {
        let v: Option<String> =
            sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = $1")
                .bind(name)
                .fetch_optional(&store.pool)
                .await?;
        anyhow::Ok(v)
    };
    if load().await?.is_none() {
        let fresh = make()?;
        sqlx::query(
            "INSERT INTO server_secrets (name, value, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(store.seal(&context, &STANDARD.encode(&fresh)))
        .bind(now)
        .execute(&store.pool)
        .await?;
    }
    let v = load()
        .await?
        .with_context(|| format!("{name} vanished after creation"))?;
    let v = store.unseal(&context, &v)?;
    STANDARD
        .decode(v)
        .with_context(|| format!("stored {name} is not base64"))
}

/// Loads the relay signing key, creating it once (race-safe across replicas).
pub async fn relay_signing_key(store: &Store, now: i64) -> anyhow::Result<SigningKey> {
    let pkcs8 = shared_secret(store, RELAY_KEY_NAME, now, || {
        let (_, pkcs8) = SigningKey::generate().map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(pkcs8)
    })
    .await?;
    SigningKey::from_pkcs8(&pkcs8).map_err(|e| anyhow::anyhow!("stored relay key: {e}"))
}

/// The portal's CSRF key (32 bytes), the same on every replica.
pub async fn portal_key(store: &Store, now: i64) -> anyhow::Result<Vec<u8>> {
    shared_secret(store, PORTAL_KEY_NAME, now, || {
        let mut k = vec![0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k)
            .map_err(|_| anyhow::anyhow!("no randomness for the portal key"))?;
        Ok(k)
    })
    .await
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
