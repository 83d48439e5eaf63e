//! Recordings of browser desktops in the database: what the browser was sent,
//! framed with times (`drawbridge_desktop::recording`), in chunks that are
//! each one LZ4 frame (the standard format `lz4 -d` reads), sealed with the
//! secrets key (bound to their recording and place). The recording's file is
//! its frames one after the other, which is what a download gives; its
//! SHA-256 goes on the audit chain when the desktop ends, so `sha256sum` of a
//! downloaded recording is the hash on the record. A chunk copied into
//! another recording or place does not open; a changed one does not open
//! either, and a removed one changes the hash.
//!
//! Each chunk is compressed as it is recorded, right after its bytes went to
//! the browser (they are still in the core's cache, and the bridge reads into
//! the same buffer again). Storing is off the desktop's path: full chunks go
//! through a short queue to a writer task of the recording, which seals,
//! inserts and hashes them in order (the hash covers exactly what was
//! stored). A `required` recording waits for room in the queue (the desktop
//! slows to what the database takes, nothing is lost); a best-effort one
//! stops being recorded instead. Chunks in the queue, and the chunk being
//! written, stay readable for watchers until they are stored.

use crate::error::AppResult;
use crate::state::AppState;
use bytes::Bytes;
use drawbridge_desktop::recording::Recorder;
use drawbridge_proto::RecordingMode;
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;

mod stored;
pub use stored::{
    FrameReader, Keep, Length, Stored, Streamed, length, read, read_keeping, streamed,
};

/// A chunk is stored once this much is waiting (or every second).
pub const CHUNK_BYTES: usize = 4 * 1024 * 1024;
/// Chunks waiting for the writer at most.
const QUEUE: usize = 4;
/// A stored chunk never opens to more than this (a chunk is at most
/// [`CHUNK_BYTES`] plus one frame): a larger stated size is damage.
const MAX_CHUNK_PLAIN: usize = 64 * 1024 * 1024;
/// `desktop_recordings.chunk_format` of chunks that are one LZ4 frame each,
/// the recording's hash over the frames.
const LZ4_FRAME: &str = "lz4-frame";
/// Of older recordings: LZ4 blocks with their size in front (or, with any
/// other name, the framed bytes themselves), the hash over the framed stream.
const LZ4_BLOCK: &str = "lz4";

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
    /// The next chunk, compressed as it is recorded: an LZ4 frame being
    /// written. Compressing what was just sent, while it is still in the
    /// core's cache, lets the bridge read into the same buffer again instead
    /// of the recording holding it until a writer compresses it.
    pending: Encoder,
    /// Recorded bytes in the next chunk (before compression).
    pending_len: usize,
    /// The next chunk's place.
    seq: i64,
    bytes: u64,
    limit: u64,
    /// Started with the first chunk.
    writer: Option<Writer>,
    shared: Arc<Shared>,
}

/// A chunk on its way to the database.
struct Chunk {
    seq: i64,
    /// One whole LZ4 frame.
    frame: Bytes,
    /// The recording's size up to and with this chunk.
    bytes: u64,
}

/// What the recording and its writer share.
#[derive(Default)]
struct Shared {
    /// Chunks handed to the writer and not stored yet (their LZ4 frames), in order.
    queued: Mutex<VecDeque<(i64, Bytes)>>,
    /// The writer could not store a chunk: nothing after it is stored.
    failed: AtomicBool,
}

struct Writer {
    tx: mpsc::Sender<Chunk>,
    /// Answers the hash of the chunks it stored.
    task: tokio::task::JoinHandle<Sha256>,
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
            pending: encoder(),
            pending_len: 0,
            seq: 0,
            bytes: 0,
            limit: u64::from(limit_mb) * 1024 * 1024,
            writer: None,
            shared: Arc::default(),
        };
        if active && r.add(&[header]).is_err() {
            r.active = false;
        }
        r
    }

    /// Compresses `parts` into the next chunk, in order.
    fn add(&mut self, parts: &[&[u8]]) -> Result<(), Stop> {
        use std::io::Write;
        for p in parts {
            if self.pending.write_all(p).is_err() {
                return Err(Stop::StorageFailed);
            }
            self.pending_len += p.len();
            self.bytes += p.len() as u64;
        }
        Ok(())
    }

    /// What is not surely stored yet, for a watcher: the first chunk place
    /// that may not be in the database, and the framed bytes from there on
    /// (chunks in the writer's queue, then what is pending), decompressed.
    pub fn unstored(&mut self) -> std::io::Result<(i64, Vec<u8>)> {
        use std::io::Write;
        let mut out = Vec::new();
        let first = {
            let queued = self.shared.queued.lock().unwrap_or_else(|e| e.into_inner());
            for (_, frame) in queued.iter() {
                decompress_into(&frame[..], &mut out)?;
            }
            queued.front().map_or(self.seq, |(seq, _)| *seq)
        };
        // The open frame so far: its last block written out, then closed
        // with an end mark of its own (the frame has no checksum to add), so
        // it reads as a whole frame while the encoder goes on with it.
        if self.pending_len > 0 {
            use std::io::Read;
            self.pending.flush()?;
            const END_MARK: [u8; 4] = [0; 4];
            decompress_into(self.pending.get_ref().chain(&END_MARK[..]), &mut out)?;
        }
        Ok((first, out))
    }

    /// Adds what the browser was sent now. `Err` when the size limit is
    /// reached: nothing of `data` is kept then.
    pub fn record(&mut self, data: &[u8]) -> Result<(), Stop> {
        if !self.active || data.is_empty() {
            return Ok(());
        }
        let t = u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX);
        let len = drawbridge_desktop::recording::framed_len(data.len());
        if self.bytes + len as u64 > self.limit {
            return Err(Stop::SizeLimit);
        }
        for (header, body) in self.framer.frame_parts(t, data) {
            self.add(&[&header, body])?;
        }
        Ok(())
    }

    /// Whether a chunk is due (size reached; the caller also stores every second).
    pub fn full(&self) -> bool {
        self.pending_len >= CHUNK_BYTES
    }

    /// Hands what is pending to the writer as the next chunk. A `required`
    /// recording waits for room in the writer's queue; a best-effort one
    /// stops (`Err`) when the queue is full. `Err` also once the writer
    /// failed to store a chunk.
    pub async fn store(&mut self, state: &AppState) -> Result<(), Stop> {
        if !self.active {
            return Ok(());
        }
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(Stop::StorageFailed);
        }
        if self.pending_len == 0 {
            return Ok(());
        }
        if self.pending.try_finish().is_err() {
            self.shared.failed.store(true, Ordering::SeqCst);
            return Err(Stop::StorageFailed);
        }
        // The next frame's output starts with room for one like this one.
        let room = self.pending.get_ref().len();
        let frame = std::mem::replace(self.pending.get_mut(), Vec::with_capacity(room));
        self.pending_len = 0;
        let writer = self.writer.get_or_insert_with(|| {
            spawn_writer(state.clone(), self.id.clone(), self.shared.clone())
        });
        let chunk = Chunk {
            seq: self.seq,
            frame: Bytes::from(frame),
            bytes: self.bytes,
        };
        self.shared
            .queued
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((chunk.seq, chunk.frame.clone()));
        self.seq += 1;
        let sent = if self.mode == RecordingMode::Required {
            writer.tx.send(chunk).await.map_err(|_| ())
        } else {
            writer.tx.try_send(chunk).map_err(|_| ())
        };
        if sent.is_err() {
            tracing::warn!(recording = %self.id, "the recording's writer fell behind or stopped");
            self.shared.failed.store(true, Ordering::SeqCst);
            return Err(Stop::StorageFailed);
        }
        Ok(())
    }

    /// Waits until every chunk handed over is stored (or the writer failed)
    /// and answers the hash of what was stored.
    async fn drain(&mut self) -> Sha256 {
        match self.writer.take() {
            Some(w) => {
                drop(w.tx);
                w.task.await.unwrap_or_default()
            }
            None => Sha256::new(),
        }
    }

    /// Stops storing; what is stored stays (its hash covers exactly that).
    pub fn stop(&mut self) {
        self.active = false;
        self.pending = encoder();
        self.pending_len = 0;
    }

    /// Waits for the writer, then gives the SHA-256 (hex) of the recording's
    /// file (every chunk stored), unless the mode is off.
    pub async fn finish(&mut self) -> Option<String> {
        let hash = self.drain().await;
        (self.mode != RecordingMode::Off).then(|| hex::encode(hash.finalize()))
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }
}

/// The recording's writer: stores each chunk in order (sealed, with the
/// recording's chunk count and size) and hashes it, stops at the first that
/// the database refuses, and answers the hash of what it stored.
fn spawn_writer(state: AppState, id: String, shared: Arc<Shared>) -> Writer {
    let (tx, mut rx) = mpsc::channel::<Chunk>(QUEUE);
    let task = tokio::spawn(async move {
        let mut hash = Sha256::new();
        while let Some(c) = rx.recv().await {
            if let Err(e) = store_chunk(&state, &id, &c).await {
                tracing::warn!(recording = %id, error = %e.message, "storing a recording chunk failed");
                shared.failed.store(true, Ordering::SeqCst);
                return hash;
            }
            hash.update(&c.frame);
            shared
                .queued
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
        }
        hash
    });
    Writer { tx, task }
}

type Encoder = lz4_flex::frame::FrameEncoder<Vec<u8>>;

/// A chunk's LZ4 encoder (independent blocks, no checksums: a frame ends
/// with its end mark alone). Blocks of 64 KiB (LZ4's default): the copy into
/// the encoder and the compression stay in the core's cache, and lz4_flex
/// zero-fills its output buffer again, for a chunk's last and shorter
/// block, only up to 64 KiB. The encoder is kept from chunk to chunk, so its
/// buffers are allocated once.
fn encoder() -> Encoder {
    use lz4_flex::frame::{BlockMode, BlockSize, FrameInfo};
    let info = FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_mode(BlockMode::Independent);
    Encoder::with_frame_info(info, Vec::new())
}

/// Appends what a whole LZ4 frame holds.
fn decompress_into(frame: impl std::io::Read, out: &mut Vec<u8>) -> std::io::Result<()> {
    use std::io::Read;
    let dec = lz4_flex::frame::FrameDecoder::new(frame);
    dec.take(MAX_CHUNK_PLAIN as u64).read_to_end(out)?;
    Ok(())
}

async fn store_chunk(state: &AppState, id: &str, c: &Chunk) -> AppResult<()> {
    let sealed = state.store.seal_bytes(&context(id, c.seq), &c.frame);
    let mut tx = state.store.begin().await?;
    sqlx::query("INSERT INTO recording_chunks (recording_id, seq, data) VALUES ($1, $2, $3)")
        .bind(id)
        .bind(c.seq)
        .bind(&sealed)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE desktop_recordings SET chunks = $1, bytes = $2, chunk_format = $3 WHERE id = $4",
    )
    .bind(c.seq + 1)
    .bind(c.bytes as i64)
    .bind(LZ4_FRAME)
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A stored chunk's bytes as they were recorded, from its opened bytes.
fn open_chunk(format: &str, opened: &[u8]) -> Option<Vec<u8>> {
    match format {
        LZ4_FRAME => {
            use std::io::Read;
            let mut plain = Vec::new();
            let dec = lz4_flex::frame::FrameDecoder::new(opened);
            dec.take(MAX_CHUNK_PLAIN as u64 + 1)
                .read_to_end(&mut plain)
                .ok()?;
            (plain.len() <= MAX_CHUNK_PLAIN).then_some(plain)
        }
        LZ4_BLOCK => {
            let stated = u32::from_le_bytes(opened.get(..4)?.try_into().ok()?) as usize;
            if stated > MAX_CHUNK_PLAIN {
                return None;
            }
            lz4_flex::block::decompress_size_prepended(opened).ok()
        }
        _ => Some(opened.to_vec()),
    }
}

/// Whether a recording's file is its chunks as stored (LZ4 frames) rather
/// than the framed stream (recordings from before frames).
fn file_is_frames(format: &str) -> bool {
    format == LZ4_FRAME
}

/// Up to `limit` stored chunks of a recording from place `from` on, as they
/// were recorded (opened and decompressed), in order and without gaps; the
/// error says what is wrong, in words for a watcher.
pub async fn chunks_from(
    state: &AppState,
    id: &str,
    from: i64,
    limit: i64,
) -> Result<Vec<(i64, Vec<u8>)>, &'static str> {
    let format: String =
        sqlx::query_scalar("SELECT chunk_format FROM desktop_recordings WHERE id = $1")
            .bind(id)
            .fetch_optional(&state.store.pool)
            .await
            .map_err(|_| "the database is unreachable")?
            .ok_or("no such desktop")?;
    let rows = sqlx::query(
        "SELECT seq, data FROM recording_chunks WHERE recording_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3",
    )
    .bind(id)
    .bind(from)
    .bind(limit)
    .fetch_all(&state.store.pool)
    .await
    .map_err(|_| "the database is unreachable")?;
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        let (Ok(seq), Ok(data)) = (r.try_get::<i64, _>(0), r.try_get::<String, _>(1)) else {
            return Err("a stored recording does not read");
        };
        if seq != from + i as i64 {
            return Err("the recording has a gap");
        }
        let plain = state
            .store
            .unseal_bytes(&context(id, seq), &data)
            .ok()
            .and_then(|b| open_chunk(&format, &b))
            .ok_or("a recording chunk does not open")?;
        out.push((seq, plain));
    }
    Ok(out)
}

/// Whether a recording is of an RDP desktop: its row says so from the
/// moment it opens (rows from before that column: its stored header).
pub async fn is_rdp(state: &AppState, recording_id: &str) -> AppResult<bool> {
    let protocol: Option<String> =
        sqlx::query_scalar("SELECT protocol FROM desktop_recordings WHERE id = $1")
            .bind(recording_id)
            .fetch_optional(&state.store.pool)
            .await?;
    match protocol.as_deref() {
        Some("rdp") => return Ok(true),
        Some("vnc") => return Ok(false),
        _ => {}
    }
    let first = read(state, recording_id, Some(1)).await?;
    Ok(first
        .stream
        .starts_with(drawbridge_desktop::recording::RDP_HEADER))
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
