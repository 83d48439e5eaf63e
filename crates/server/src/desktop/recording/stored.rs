//! Stored recordings read back, a few chunks at a time: a replay or a download
//! streams its body and holds one batch of chunks in memory, whatever the
//! recording's size (up to the account's `recording_max_mb` of stream, which
//! a Raw desktop fills in a minute). Whether the recording is the one on the
//! record is known before the body starts: a first pass hashes the stored
//! frames (without opening them), the second streams them.

use super::{context, file_is_frames, open_chunk};
use crate::error::{AppError, AppResult};
use crate::state::AppState;
use axum::body::Body;
use bytes::Bytes;
use sha2::{Digest, Sha256};
use sqlx::Row;
use std::collections::VecDeque;

/// Chunks read from the database at once (each at most a few MiB).
const BATCH: i64 = 4;

/// One stored recording, read whole: the framed stream, the file a download
/// gives, and whether the file's SHA-256 is the one on the record.
pub struct Stored {
    pub stream: Vec<u8>,
    /// The chunks' LZ4 frames one after the other (`lz4 -d` gives `stream`);
    /// of recordings from before frames, the stream itself.
    pub file: Vec<u8>,
    /// The file's name extension: `dbrfb.lz4`, or `dbrfb` for older ones.
    pub extension: &'static str,
    pub sha256: String,
    pub intact: bool,
}

/// What a reader keeps of each chunk besides the hash: a replay needs the
/// stream, a download only the file (a Raw desktop's stream is hundreds of
/// times its file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Stream,
    File,
    Both,
}

/// A stored recording's chunks `0..upto`, in order, a batch at a time.
///
/// The rules that make a recording not intact are the same for every reader:
/// a chunk that does not open is left out; from a missing place on nothing
/// more is given (the rows after a gap do not follow their predecessor); fewer
/// rows than places; a hash that is not the one on the record.
struct Walk {
    state: AppState,
    id: String,
    format: String,
    upto: i64,
    /// The next place to ask the database for.
    next: i64,
    rows: VecDeque<(i64, String)>,
    /// Rows seen so far (the place the next row should have).
    seen: i64,
    intact: bool,
    /// SHA-256 over the file, as far as it was walked.
    hash: Sha256,
    /// The hash on the record (set when the desktop ended).
    recorded: Option<String>,
}

/// What one chunk gives the reader (empty where it keeps nothing).
struct Piece {
    stream: Vec<u8>,
    file: Vec<u8>,
}

impl Walk {
    async fn open(state: &AppState, id: &str, upto: Option<i64>) -> AppResult<Walk> {
        let row = sqlx::query(
            "SELECT chunks, sha256, chunk_format FROM desktop_recordings WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&state.store.pool)
        .await?
        .ok_or_else(|| AppError::not_found("recording"))?;
        let chunks: i64 = row.try_get("chunks")?;
        Ok(Walk {
            state: state.clone(),
            id: id.to_string(),
            format: row.try_get("chunk_format")?,
            upto: upto.unwrap_or(chunks),
            next: 0,
            rows: VecDeque::new(),
            seen: 0,
            intact: true,
            hash: Sha256::new(),
            recorded: row.try_get("sha256")?,
        })
    }

    /// Starts the walk at place `seq` (the places before it count as seen;
    /// the hash then covers only what follows).
    fn starting_at(mut self, seq: i64) -> Walk {
        (self.next, self.seen) = (seq, seq);
        self
    }

    fn extension(&self) -> &'static str {
        if file_is_frames(&self.format) {
            "dbrfb.lz4"
        } else {
            "dbrfb"
        }
    }

    async fn row(&mut self) -> AppResult<Option<(i64, String)>> {
        if self.rows.is_empty() && self.next < self.upto {
            let rows = sqlx::query(
                "SELECT seq, data FROM recording_chunks WHERE recording_id = $1 AND seq >= $2 AND seq < $3 \
                 ORDER BY seq LIMIT $4",
            )
            .bind(&self.id)
            .bind(self.next)
            .bind(self.upto)
            .bind(BATCH)
            .fetch_all(&self.state.store.pool)
            .await?;
            self.next = self.upto;
            for r in rows {
                let seq: i64 = r.try_get("seq")?;
                self.next = seq + 1;
                self.rows.push_back((seq, r.try_get("data")?));
            }
        }
        Ok(self.rows.pop_front())
    }

    /// The next chunk that counts, as `keep` wants it (`None` at the end).
    async fn piece(&mut self, keep: Option<Keep>) -> AppResult<Option<Piece>> {
        let want_stream = matches!(keep, Some(Keep::Stream | Keep::Both));
        let want_file = matches!(keep, Some(Keep::File | Keep::Both));
        while let Some((seq, data)) = self.row().await? {
            let place = self.seen;
            self.seen += 1;
            let Ok(opened) = self
                .state
                .store
                .unseal_bytes(&context(&self.id, seq), &data)
            else {
                self.intact = false;
                continue;
            };
            if seq != place {
                self.intact = false;
                continue;
            }
            let mut piece = Piece {
                stream: Vec::new(),
                file: Vec::new(),
            };
            if file_is_frames(&self.format) {
                // The file is the frames as stored: hashing or a download need not open them.
                self.hash.update(&opened);
                if want_stream {
                    match open_chunk(&self.format, &opened) {
                        Some(b) => piece.stream = b,
                        None => self.intact = false,
                    }
                }
                if want_file {
                    piece.file = opened;
                }
            } else {
                // Older recordings: the file is the stream.
                let Some(b) = open_chunk(&self.format, &opened) else {
                    self.intact = false;
                    continue;
                };
                self.hash.update(&b);
                if want_stream && want_file {
                    piece.file = b.clone();
                }
                if want_stream {
                    piece.stream = b;
                } else if want_file {
                    piece.file = b;
                }
            }
            return Ok(Some(piece));
        }
        Ok(None)
    }

    /// After the last piece: the file's SHA-256 (hex) and whether the
    /// recording is whole and the one on the record.
    fn finish(self) -> (String, bool) {
        let sha256 = hex::encode(self.hash.finalize());
        let mut intact = self.intact && self.seen == self.upto;
        if let Some(want) = &self.recorded {
            intact &= crate::secret::ct_eq(want.as_bytes(), sha256.as_bytes());
        }
        (sha256, intact)
    }
}

/// Reads chunks `0..upto` (all when `None`) of a recording and checks them.
pub async fn read(state: &AppState, recording_id: &str, upto: Option<i64>) -> AppResult<Stored> {
    read_keeping(state, recording_id, upto, Keep::Both).await
}

/// [`read`], keeping only what the caller needs (the other stays empty).
pub async fn read_keeping(
    state: &AppState,
    recording_id: &str,
    upto: Option<i64>,
    keep: Keep,
) -> AppResult<Stored> {
    let mut walk = Walk::open(state, recording_id, upto).await?;
    let extension = walk.extension();
    let (mut stream, mut file) = (Vec::new(), Vec::new());
    while let Some(p) = walk.piece(Some(keep)).await? {
        stream.extend_from_slice(&p.stream);
        file.extend_from_slice(&p.file);
    }
    let (sha256, intact) = walk.finish();
    Ok(Stored {
        stream,
        file,
        extension,
        sha256,
        intact,
    })
}

/// A whole recording as a response body, streamed (`File` or `Stream`),
/// with what is known of it before the body starts.
pub struct Streamed {
    pub body: Body,
    pub extension: &'static str,
    pub sha256: String,
    pub intact: bool,
}

/// Checks a recording (a pass that hashes its stored frames), then gives its
/// file or its stream as a body that reads the chunks again as it is sent.
/// Chunks are never changed once stored, so the second pass gives what the
/// first hashed; should a chunk still go missing in between, the body ends
/// early with an error (the client sees a cut transfer, not a shorter file).
pub async fn streamed(state: &AppState, recording_id: &str, keep: Keep) -> AppResult<Streamed> {
    let mut check = Walk::open(state, recording_id, None).await?;
    let extension = check.extension();
    let upto = check.upto;
    let mut pieces = 0usize;
    while check.piece(None).await?.is_some() {
        pieces += 1;
    }
    let (counted, opened_all) = (check.seen, check.intact);
    let (sha256, intact) = check.finish();
    let walk = Walk::open(state, recording_id, Some(upto)).await?;
    let changed = || std::io::Error::other("the recording changed while it was read");
    // The second pass must give what the first saw: as many rows and pieces,
    // and no chunk that fails to open where every chunk opened before.
    let body = futures_util::stream::unfold(Some((walk, 0usize)), move |state| async move {
        let (mut walk, given) = state?;
        match walk.piece(Some(keep)).await {
            Ok(_) if opened_all && !walk.intact => Some((Err(changed()), None)),
            Ok(Some(_)) if given == pieces => Some((Err(changed()), None)),
            Ok(Some(p)) => {
                let b = if keep == Keep::File { p.file } else { p.stream };
                Some((Ok(Bytes::from(b)), Some((walk, given + 1))))
            }
            Ok(None) if walk.seen == counted && given == pieces => None,
            Ok(None) => Some((Err(changed()), None)),
            Err(e) => Some((Err(std::io::Error::other(e.message)), None)),
        }
    });
    Ok(Streamed {
        body: Body::from_stream(body),
        extension,
        sha256,
        intact,
    })
}

/// A recording's length and whether it is the one on the record.
pub struct Length {
    /// The last frame's time (0 without frames).
    pub end_ms: u32,
    pub sha256: String,
    pub intact: bool,
}

/// A recording's length (its last frame's time), its hash and whether it is
/// the one on the record: one pass hashes the stored frames without opening
/// them, then only the last chunk is opened, since chunks hold whole frames
/// and times only grow. Where the last chunk does not read on its own (it
/// does not open, is missing, or starts inside a frame), every chunk is read
/// for it, as a replay would.
pub async fn length(state: &AppState, recording_id: &str) -> AppResult<Length> {
    let mut check = Walk::open(state, recording_id, None).await?;
    let upto = check.upto;
    while check.piece(None).await?.is_some() {}
    let (sha256, intact) = check.finish();
    let mut end = None;
    if upto > 0 {
        let mut last = Walk::open(state, recording_id, Some(upto))
            .await?
            .starting_at(upto - 1);
        if let Some(p) = last.piece(Some(Keep::Stream)).await?
            && last.intact
        {
            end = last_time(&p.stream, upto == 1);
        }
    } else {
        end = Some(0);
    }
    let end_ms = match end {
        Some(t) => t,
        None => {
            let mut frames = FrameReader::open(state, recording_id).await?;
            let mut end = 0;
            while let Some(batch) = frames.next_frames().await? {
                end = batch.last().map_or(end, |(t, _)| *t);
            }
            end
        }
    };
    Ok(Length {
        end_ms,
        sha256,
        intact,
    })
}

/// The last frame's time in a chunk read on its own (`first`: it starts with
/// the recording's header); `None` when it does not read whole.
fn last_time(stream: &[u8], first: bool) -> Option<u32> {
    use drawbridge_desktop::recording::{iter_frames, iter_frames_after};
    let frames = if first {
        iter_frames(stream)
    } else {
        iter_frames_after(stream, 0)
    };
    let mut end = 0;
    for f in frames {
        end = f.ok()?.t_ms;
    }
    Some(end)
}

/// A recording's frames, read a chunk at a time (for a player that paces them
/// itself): each call gives the complete frames of the next chunk, owned. A
/// frame cut by a chunk's end (recordings store whole frames, but the reader
/// does not rely on it) is given with the next chunk.
pub struct FrameReader {
    walk: Walk,
    /// Framed bytes that follow the stored chunks (a live desktop's
    /// recording not stored yet), read after them.
    tail: Option<Vec<u8>>,
    carry: Vec<u8>,
    previous: u32,
    started: bool,
    done: bool,
}

impl FrameReader {
    pub async fn open(state: &AppState, recording_id: &str) -> AppResult<FrameReader> {
        Self::open_with_tail(state, recording_id, None, Vec::new()).await
    }

    /// The frames of chunks `0..upto` (all when `None`), then those of
    /// `tail`: the framed bytes that follow them (from a live recording).
    pub async fn open_with_tail(
        state: &AppState,
        recording_id: &str,
        upto: Option<i64>,
        tail: Vec<u8>,
    ) -> AppResult<FrameReader> {
        Ok(FrameReader {
            walk: Walk::open(state, recording_id, upto).await?,
            tail: (!tail.is_empty()).then_some(tail),
            carry: Vec::new(),
            previous: 0,
            started: false,
            done: false,
        })
    }

    /// The next chunk's frames as `(ms, data)`; `None` after the last. A
    /// frame that does not read is an error (and the end).
    pub async fn next_frames(&mut self) -> AppResult<Option<Vec<(u32, Bytes)>>> {
        use drawbridge_desktop::recording::{RecordingError, iter_frames, iter_frames_after};
        while !self.done {
            let stream = match self.walk.piece(Some(Keep::Stream)).await? {
                Some(piece) => piece.stream,
                None => match self.tail.take() {
                    Some(tail) => tail,
                    None => {
                        self.done = true;
                        break;
                    }
                },
            };
            let mut buf = std::mem::take(&mut self.carry);
            buf.extend_from_slice(&stream);
            let mut frames = if self.started {
                iter_frames_after(&buf, self.previous)
            } else {
                iter_frames(&buf)
            };
            self.started = true;
            let mut ranges = Vec::new();
            let mut cut_at = None;
            for f in frames.by_ref() {
                match f {
                    Ok(f) => {
                        let start = f.data.as_ptr() as usize - buf.as_ptr() as usize;
                        ranges.push((f.t_ms, start..start + f.data.len()));
                    }
                    Err(RecordingError::Truncated { offset }) => cut_at = Some(offset),
                    Err(e) => {
                        self.done = true;
                        return Err(AppError::internal(anyhow::anyhow!(
                            "recording {} does not parse: {e}",
                            self.walk.id
                        )));
                    }
                }
            }
            self.previous = frames.previous();
            if let Some(at) = cut_at {
                self.carry = buf[at..].to_vec();
            }
            let buf = Bytes::from(buf);
            if !ranges.is_empty() {
                return Ok(Some(
                    ranges.into_iter().map(|(t, r)| (t, buf.slice(r))).collect(),
                ));
            }
        }
        Ok(None)
    }

    /// After the last frames: the file's SHA-256 (hex) and whether the
    /// recording is whole and the one on the record.
    pub fn finish(self) -> (String, bool) {
        self.walk.finish()
    }
}
