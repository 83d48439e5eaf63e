//! Recordings of browser desktops in the database: what the browser was sent,
//! framed with times (`drawbridge_desktop::recording`), in chunks sealed with
//! the secrets key (bound to their recording and place), with a SHA-256 over
//! the whole stream that goes on the audit chain when the desktop ends. A
//! chunk copied into another recording or place does not open; a changed one
//! does not open either, and a removed one changes the hash.

use crate::error::{AppError, AppResult};
use crate::state::AppState;
use drawbridge_desktop::recording::Recorder;
use drawbridge_proto::RecordingMode;
use sha2::{Digest, Sha256};
use sqlx::Row;

/// A chunk is stored once this much is waiting (or every second).
pub const CHUNK_BYTES: usize = 256 * 1024;

/// Where chunk `seq` of a recording is stored (its sealing context).
pub(crate) fn context(recording_id: &str, seq: i64) -> String {
    format!("recording_chunks:{recording_id}:{seq}")
}

/// Why a desktop stops being recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The account's size limit for one recording.
    SizeLimit,
    /// The database refused a chunk.
    StorageFailed,
}

impl Stop {
    pub fn message(self) -> &'static str {
        match self {
            Stop::SizeLimit => "the desktop's recording reached the account's size limit",
            Stop::StorageFailed => "the desktop's recording could not be stored",
        }
    }
}

/// The recording of one open desktop.
pub struct Recording {
    pub id: String,
    pub mode: RecordingMode,
    /// False once nothing more is stored (mode off, a stop).
    pub active: bool,
    framer: Recorder,
    started: std::time::Instant,
    pending: Vec<u8>,
    seq: i64,
    bytes: u64,
    limit: u64,
    hash: Sha256,
}

impl Recording {
    /// A recording that starts with `header` (`drawbridge_desktop::recording::HEADER`
    /// for VNC, `RDP_HEADER` for RDP).
    pub fn new(id: String, mode: RecordingMode, limit_mb: u32, header: &[u8]) -> Recording {
        let active = mode != RecordingMode::Off;
        let mut r = Recording {
            id,
            mode,
            active,
            framer: Recorder::new(),
            started: std::time::Instant::now(),
            pending: Vec::new(),
            seq: 0,
            bytes: 0,
            limit: u64::from(limit_mb) * 1024 * 1024,
            hash: Sha256::new(),
        };
        if active {
            r.add(header);
        }
        r
    }

    fn add(&mut self, framed: &[u8]) {
        self.hash.update(framed);
        self.bytes += framed.len() as u64;
        self.pending.extend_from_slice(framed);
    }

    /// Chunks stored so far.
    pub fn stored_chunks(&self) -> i64 {
        self.seq
    }

    /// The framed bytes not stored yet.
    pub fn pending(&self) -> &[u8] {
        &self.pending
    }

    /// Adds what the browser was sent now. `Err` when the size limit is
    /// reached: nothing of `data` is kept then.
    pub fn record(&mut self, data: &[u8]) -> Result<(), Stop> {
        if !self.active || data.is_empty() {
            return Ok(());
        }
        let t = u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX);
        let framed = self.framer.frame(t, data);
        if self.bytes + framed.len() as u64 > self.limit {
            return Err(Stop::SizeLimit);
        }
        self.add(&framed);
        Ok(())
    }

    /// Whether a chunk is due (size reached; the caller also stores every second).
    pub fn full(&self) -> bool {
        self.pending.len() >= CHUNK_BYTES
    }

    /// Stores what is pending as the next chunk.
    pub async fn store(&mut self, state: &AppState) -> Result<(), Stop> {
        if !self.active || self.pending.is_empty() {
            return Ok(());
        }
        let sealed = state
            .store
            .seal_bytes(&context(&self.id, self.seq), &self.pending);
        let r = async {
            let mut tx = state.store.begin().await?;
            sqlx::query(
                "INSERT INTO recording_chunks (recording_id, seq, data) VALUES ($1, $2, $3)",
            )
            .bind(&self.id)
            .bind(self.seq)
            .bind(&sealed)
            .execute(&mut *tx)
            .await?;
            sqlx::query("UPDATE desktop_recordings SET chunks = $1, bytes = $2 WHERE id = $3")
                .bind(self.seq + 1)
                .bind(self.bytes as i64)
                .bind(&self.id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok::<_, AppError>(())
        }
        .await;
        match r {
            Ok(()) => {
                self.seq += 1;
                self.pending.clear();
                Ok(())
            }
            Err(e) => {
                tracing::warn!(recording = %self.id, error = %e.message, "storing a recording chunk failed");
                Err(Stop::StorageFailed)
            }
        }
    }

    /// Stops storing; what is stored stays (its hash covers exactly that).
    pub fn stop(&mut self) {
        self.active = false;
        self.pending.clear();
    }

    /// The SHA-256 (hex) of everything recorded, when anything was.
    pub fn finish(&mut self) -> Option<String> {
        (self.mode != RecordingMode::Off)
            .then(|| hex::encode(std::mem::take(&mut self.hash).finalize()))
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// Whether a recording is of an RDP desktop (its stored header says so).
pub async fn is_rdp(state: &AppState, recording_id: &str) -> AppResult<bool> {
    let first = read(state, recording_id, Some(1)).await?;
    Ok(first
        .stream
        .starts_with(drawbridge_desktop::recording::RDP_HEADER))
}

/// One stored recording, read whole: the framed stream, and whether its
/// SHA-256 is the one on the record.
pub struct Stored {
    pub stream: Vec<u8>,
    pub sha256: String,
    pub intact: bool,
}

/// Reads chunks `0..upto` (all when `None`) of a recording and checks them.
pub async fn read(state: &AppState, recording_id: &str, upto: Option<i64>) -> AppResult<Stored> {
    let row = sqlx::query("SELECT chunks, sha256 FROM desktop_recordings WHERE id = $1")
        .bind(recording_id)
        .fetch_optional(&state.store.pool)
        .await?
        .ok_or_else(|| AppError::not_found("recording"))?;
    let chunks: i64 = row.try_get("chunks")?;
    let recorded: Option<String> = row.try_get("sha256")?;
    let upto = upto.unwrap_or(chunks);
    let rows = sqlx::query(
        "SELECT seq, data FROM recording_chunks WHERE recording_id = $1 AND seq < $2 ORDER BY seq",
    )
    .bind(recording_id)
    .bind(upto)
    .fetch_all(&state.store.pool)
    .await?;
    let mut stream = Vec::new();
    let mut intact = rows.len() as i64 == upto;
    for (i, r) in rows.iter().enumerate() {
        let seq: i64 = r.try_get("seq")?;
        let data: String = r.try_get("data")?;
        match state.store.unseal_bytes(&context(recording_id, seq), &data) {
            Ok(b) if seq == i as i64 => stream.extend_from_slice(&b),
            _ => intact = false,
        }
    }
    let sha256 = hex::encode(Sha256::digest(&stream));
    if let Some(want) = recorded {
        intact &= crate::secret::ct_eq(want.as_bytes(), sha256.as_bytes());
    }
    Ok(Stored {
        stream,
        sha256,
        intact,
    })
}

/// Deletes recordings that ended longer ago than their account keeps them, a
/// batch at a time. Answers how many went.
pub async fn purge(state: &AppState) -> AppResult<u64> {
    let now = state.now();
    let accounts = sqlx::query("SELECT id, settings FROM accounts")
        .fetch_all(&state.store.pool)
        .await?;
    let mut gone = 0;
    for a in accounts {
        let id: String = a.try_get("id")?;
        let settings: String = a.try_get("settings")?;
        let days = serde_json::from_str::<drawbridge_proto::AccountSettings>(&settings)
            .map(|s| s.recording_retention_days)
            .unwrap_or(90);
        let old = sqlx::query(
            "SELECT id FROM desktop_recordings WHERE account_id = $1 AND state = 'ended' AND ended_at < $2 LIMIT 100",
        )
        .bind(&id)
        .bind(now - i64::from(days) * 86_400)
        .fetch_all(&state.store.pool)
        .await?;
        for r in old {
            let rid: String = r.try_get("id")?;
            let mut tx = state.store.begin().await?;
            sqlx::query("DELETE FROM recording_chunks WHERE recording_id = $1")
                .bind(&rid)
                .execute(&mut *tx)
                .await?;
            sqlx::query("DELETE FROM desktop_recordings WHERE id = $1")
                .bind(&rid)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            gone += 1;
        }
    }
    Ok(gone)
}

/// Once a minute: recordings past their account's retention go, and desktops
/// still marked open although their session ended over a minute ago (their
/// replica stopped before it could say so) are marked ended.
pub fn spawn_housekeeping(state: AppState) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            tick.tick().await;
            match purge(&state).await {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(recordings = n, "desktop recordings past retention deleted")
                }
                Err(e) => tracing::warn!(error = %e.message, "desktop recording purge failed"),
            }
            if let Err(e) = close_orphans(&state).await {
                tracing::warn!(error = %e.message, "closing orphaned desktops failed");
            }
        }
    });
}

/// Marks ended the desktops whose session ended over a minute ago.
pub async fn close_orphans(state: &AppState) -> AppResult<u64> {
    let now = state.now();
    let r = sqlx::query(
        "UPDATE desktop_recordings SET state = 'ended', ended_at = $1,
            end_reason = 'its server stopped before the desktop ended'
         WHERE state = 'live' AND session_id IN
            (SELECT id FROM sessions WHERE state = 'ended' AND ended_at < $2)",
    )
    .bind(now)
    .bind(now - 60)
    .execute(&state.store.pool)
    .await?;
    Ok(r.rows_affected())
}
