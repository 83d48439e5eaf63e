//! The server's releases: the release roots (the operator's first root and
//! its signed rotations) and the signed edge binaries, stored in chunks. The
//! server checks every signature when something is added, so that an admin
//! cannot roll out what no edge would accept; the edges check again against
//! the root they pinned, so that a server that lies gains nothing.

use crate::db::Store;
use crate::error::{AppError, AppResult};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use drawbridge_proto::update::{MAX_RELEASE_SIZE, MAX_ROTATIONS, MAX_SIGNED_LEN, Release};
use drawbridge_release::{PublicKey, ReleaseMeta, SignedRelease};
use sqlx::Row;

/// A release binary is stored (and served) in chunks of this size.
pub const CHUNK: usize = 1024 * 1024;

/// The roots the server trusts: the first, and the rotations after it.
#[derive(Debug, Clone)]
pub struct Roots {
    pub first: PublicKey,
    pub rotations: Vec<String>,
    /// The root now in force.
    pub current: PublicKey,
}

pub(crate) fn broken(m: impl std::fmt::Display) -> AppError {
    AppError::internal(anyhow::anyhow!("{m}"))
}

/// Reads the roots; `None` while the operator has set none.
pub async fn roots(store: &Store) -> AppResult<Option<Roots>> {
    let rows = sqlx::query("SELECT public_key, rotation FROM release_roots ORDER BY seq")
        .fetch_all(&store.pool)
        .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let first: PublicKey = first
        .try_get::<String, _>(0)?
        .parse()
        .map_err(|_| broken("a stored release root does not parse"))?;
    let rotations: Vec<String> = rows
        .iter()
        .skip(1)
        .map(|r| r.try_get::<String, _>(1))
        .collect::<Result<_, _>>()?;
    let current = drawbridge_release::current_root(&first, &rotations)
        .map_err(|e| broken(format!("the stored release roots: {e}")))?;
    Ok(Some(Roots {
        first,
        rotations,
        current,
    }))
}

/// Sets the first release root (the operator's `release root`). Refused once
/// one is set: a new root comes only through a rotation signed by the old one.
pub async fn set_first_root(store: &Store, key: &PublicKey, now: i64) -> AppResult<()> {
    let mut tx = store.begin().await?;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM release_roots")
        .fetch_one(&mut *tx)
        .await?;
    if n > 0 {
        return Err(AppError::conflict(
            "a release root is set already; a new one needs a rotation signed by it (release rotate-root)",
        ));
    }
    let r = sqlx::query(
        "INSERT INTO release_roots (seq, public_key, rotation, created_at) VALUES (0, $1, NULL, $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(key.to_string())
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() != 1 {
        return Err(AppError::conflict("a release root is set already"));
    }
    tx.commit().await?;
    Ok(())
}

/// Adds a rotation signed by the current root; returns the new root.
pub async fn rotate_root(store: &Store, rotation: &str, now: i64) -> AppResult<PublicKey> {
    if rotation.len() > MAX_SIGNED_LEN {
        return Err(AppError::invalid("the rotation is too long"));
    }
    let mut tx = store.begin().await?;
    let rows = sqlx::query("SELECT seq, public_key, rotation FROM release_roots ORDER BY seq")
        .fetch_all(&mut *tx)
        .await?;
    let Some(first) = rows.first() else {
        return Err(AppError::conflict(
            "no release root is set yet (release root)",
        ));
    };
    if rows.len() > MAX_ROTATIONS {
        return Err(AppError::conflict("too many root rotations"));
    }
    let first: PublicKey = first
        .try_get::<String, _>(1)?
        .parse()
        .map_err(|_| broken("a stored release root does not parse"))?;
    let mut chain: Vec<String> = rows
        .iter()
        .skip(1)
        .map(|r| r.try_get::<String, _>(2))
        .collect::<Result<_, _>>()?;
    let before = drawbridge_release::current_root(&first, &chain)
        .map_err(|e| broken(format!("the stored release roots: {e}")))?;
    chain.push(rotation.to_string());
    let next = drawbridge_release::current_root(&first, &chain)
        .map_err(|e| AppError::invalid(format!("the rotation: {e}")))?;
    if next == before {
        return Err(AppError::invalid(
            "the rotation does not lead from the current root to a new one",
        ));
    }
    let seq = rows.len() as i64;
    let r = sqlx::query(
        "INSERT INTO release_roots (seq, public_key, rotation, created_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT DO NOTHING",
    )
    .bind(seq)
    .bind(next.to_string())
    .bind(rotation)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() != 1 {
        return Err(AppError::conflict(
            "another rotation was added at the same time",
        ));
    }
    tx.commit().await?;
    Ok(next)
}

/// Verifies `signed` (the release's metadata) under the current root and the
/// binary against it, then stores both. The same version and target twice is
/// a conflict.
pub async fn add_release(
    store: &Store,
    binary: &[u8],
    signed: &str,
    now: i64,
) -> AppResult<Release> {
    if binary.len() as u64 > MAX_RELEASE_SIZE {
        return Err(AppError::invalid("the binary is larger than 256 MiB"));
    }
    let roots = roots(store).await?.ok_or_else(|| {
        AppError::conflict("no release root is set yet (drawbridge-server release root)")
    })?;
    let parsed = SignedRelease::from_json(signed)
        .map_err(|e| AppError::invalid(format!("the signature file: {e}")))?;
    let meta: ReleaseMeta = drawbridge_release::verify(&roots.current, &parsed, now)
        .map_err(|e| AppError::invalid(format!("the signature: {e}")))?;
    let mut digest = drawbridge_release::Digest::new(&meta);
    digest
        .update(binary)
        .and_then(|()| digest.finish())
        .map_err(|e| AppError::invalid(format!("the binary: {e}")))?;
    let id = crate::secret::new_id();
    let chunks: Vec<&[u8]> = binary.chunks(CHUNK).collect();
    let mut tx = store.begin().await?;
    let r = sqlx::query(
        "INSERT INTO releases (id, version, target, size, sha256, signed, downgrade, chunks, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING",
    )
    .bind(&id)
    .bind(&meta.version)
    .bind(&meta.target)
    .bind(meta.size as i64)
    .bind(&meta.sha256)
    .bind(signed)
    .bind(i64::from(meta.downgrade))
    .bind(chunks.len() as i64)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() != 1 {
        // The same binary signed again (a newer signing key, or as a
        // downgrade): the new signature replaces the old one.
        let same = sqlx::query(
            "UPDATE releases SET signed = $1, downgrade = $2
             WHERE version = $3 AND target = $4 AND sha256 = $5 AND size = $6",
        )
        .bind(signed)
        .bind(i64::from(meta.downgrade))
        .bind(&meta.version)
        .bind(&meta.target)
        .bind(&meta.sha256)
        .bind(meta.size as i64)
        .execute(&mut *tx)
        .await?;
        if same.rows_affected() != 1 {
            return Err(AppError::conflict(format!(
                "release {} for {} exists already with another binary",
                meta.version, meta.target
            )));
        }
        let row = sqlx::query(&format!(
            "SELECT {RELEASE_COLUMNS} FROM releases WHERE version = $1 AND target = $2"
        ))
        .bind(&meta.version)
        .bind(&meta.target)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        return release_of(&row);
    }
    for (seq, c) in chunks.iter().enumerate() {
        sqlx::query("INSERT INTO release_chunks (release_id, seq, data) VALUES ($1, $2, $3)")
            .bind(&id)
            .bind(seq as i64)
            .bind(STANDARD.encode(c))
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(Release {
        id,
        version: meta.version,
        target: meta.target,
        size: meta.size,
        sha256: meta.sha256,
        downgrade: meta.downgrade,
        created_at: now,
    })
}

fn release_of(r: &sqlx::any::AnyRow) -> AppResult<Release> {
    Ok(Release {
        id: r.try_get(0)?,
        version: r.try_get(1)?,
        target: r.try_get(2)?,
        size: r.try_get::<i64, _>(3)?.max(0) as u64,
        sha256: r.try_get(4)?,
        downgrade: r.try_get::<i64, _>(5)? != 0,
        created_at: r.try_get(6)?,
    })
}

const RELEASE_COLUMNS: &str = "id, version, target, size, sha256, downgrade, created_at";

/// Every release, newest first.
pub async fn list(store: &Store) -> AppResult<Vec<Release>> {
    let rows = sqlx::query(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases ORDER BY created_at DESC, id DESC LIMIT 500"
    ))
    .fetch_all(&store.pool)
    .await?;
    rows.iter().map(release_of).collect()
}

/// Whether a stored release still verifies under the current root now: its
/// signing key's certificate may have expired or the root rotated since it was
/// added, and an edge would refuse it. The error says what to do.
pub async fn check_installable(store: &Store, id: &str, now: i64) -> AppResult<()> {
    let signed = signed(store, id)
        .await?
        .ok_or_else(|| AppError::not_found("release"))?;
    let roots = roots(store)
        .await?
        .ok_or_else(|| broken("a release is stored but no release root"))?;
    let parsed = SignedRelease::from_json(&signed)
        .map_err(|e| broken(format!("a stored release signature: {e}")))?;
    drawbridge_release::verify(&roots.current, &parsed, now).map_err(|e| {
        AppError::invalid(format!(
            "the release no longer verifies ({e}); sign it again with a current signing key \
             (drawbridge-release sign) and add it again (drawbridge-server release add)"
        ))
    })?;
    Ok(())
}

/// One release.
pub async fn get(store: &Store, id: &str) -> AppResult<Option<Release>> {
    let row = sqlx::query(&format!(
        "SELECT {RELEASE_COLUMNS} FROM releases WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&store.pool)
    .await?;
    row.as_ref().map(release_of).transpose()
}

/// The signed metadata of a release.
pub async fn signed(store: &Store, id: &str) -> AppResult<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT signed FROM releases WHERE id = $1")
            .bind(id)
            .fetch_optional(&store.pool)
            .await?,
    )
}

/// Chunk `seq` of a release's binary.
pub async fn chunk(store: &Store, id: &str, seq: i64) -> AppResult<Option<Vec<u8>>> {
    let data: Option<String> =
        sqlx::query_scalar("SELECT data FROM release_chunks WHERE release_id = $1 AND seq = $2")
            .bind(id)
            .bind(seq)
            .fetch_optional(&store.pool)
            .await?;
    data.map(|d| {
        STANDARD
            .decode(d)
            .map_err(|_| broken("a stored release chunk does not decode"))
    })
    .transpose()
}
