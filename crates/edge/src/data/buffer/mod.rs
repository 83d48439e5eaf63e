//! The historian's durable buffer on the edge: records wait here, across
//! restarts and power loss, until the server has acknowledged them.
//!
//! ```text
//! historian/state.json            {stream, floor, dropped}: written atomically (fsync, rename, fsync dir)
//! historian/<first seq>.seg       append-only segments of framed, checksummed records (segment.rs)
//! ```
//!
//! - `stream` is random, made with the buffer; `seq` starts at 1 and strictly
//!   increases; it is never handed out twice, across restarts too (the next one
//!   follows the last record on disk or the floor, whichever is higher, and
//!   both only ever grow).
//! - `floor`: every record up to it is forgotten, acknowledged or dropped.
//!   A segment wholly at or below the floor is deleted.
//! - [`Buffer::append`] writes a batch and fsyncs it before it returns: a record
//!   reported appended survives a kill or a power loss. A record cut short by
//!   one (torn) is found by its checksum on open and cut off; it was never
//!   reported appended, nor sent, so its `seq` is free again.
//! - Bounded: past `max_records` waiting, the oldest are dropped (the floor
//!   moves past them), counted in `dropped` (persisted, reported in
//!   [`BufferStatus`]).

pub mod segment;

use drawbridge_proto::TagName;
use drawbridge_proto::data::{BufferStatus, Record, RecordBody};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Default bound of waiting records.
pub const DEFAULT_MAX_RECORDS: u64 = 300_000;
/// Records per segment file.
pub const SEGMENT_RECORDS: u64 = 10_000;

#[derive(Debug, Clone, Copy)]
pub struct BufferConfig {
    pub max_records: u64,
    pub segment_records: u64,
}

impl Default for BufferConfig {
    fn default() -> Self {
        BufferConfig {
            max_records: DEFAULT_MAX_RECORDS,
            segment_records: SEGMENT_RECORDS,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    stream: String,
    floor: u64,
    dropped: u64,
}

#[derive(Debug)]
struct Segment {
    first: u64,
    /// The last seq in it (`first - 1` when empty).
    last: u64,
    path: PathBuf,
}

/// The buffer; one per state directory (the agent holds it alone).
#[derive(Debug)]
pub struct Buffer {
    dir: PathBuf,
    cfg: BufferConfig,
    meta: Meta,
    segments: VecDeque<Segment>,
    /// The last segment, open for appending.
    tail: Option<File>,
    next_seq: u64,
    /// A write failed: the segment's end is unknown until the buffer is opened again.
    poisoned: bool,
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.seg")
}

impl Buffer {
    /// Opens the buffer in `dir` (created with a new stream when absent), cutting
    /// off a torn tail.
    pub fn open(dir: &Path, cfg: BufferConfig) -> io::Result<Buffer> {
        std::fs::create_dir_all(dir)?;
        let cfg = BufferConfig {
            max_records: cfg.max_records.max(1),
            segment_records: cfg.segment_records.max(1),
        };
        let state = dir.join("state.json");
        let meta = match std::fs::read(&state) {
            Ok(b) => serde_json::from_slice::<Meta>(&b).map_err(io::Error::other)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let mut id = [0u8; 16];
                rand::Rng::fill(&mut rand::thread_rng(), &mut id);
                let meta = Meta {
                    stream: id.iter().map(|b| format!("{b:02x}")).collect(),
                    floor: 0,
                    dropped: 0,
                };
                // Segments without a state are another stream's leftovers.
                for e in std::fs::read_dir(dir)?.flatten() {
                    if e.file_name().to_string_lossy().ends_with(".seg") {
                        std::fs::remove_file(e.path())?;
                    }
                }
                write_meta(dir, &meta)?;
                meta
            }
            Err(e) => return Err(e),
        };
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                name.strip_suffix(".seg")?.parse().ok()
            })
            .collect();
        firsts.sort_unstable();
        let mut segments = VecDeque::new();
        for first in firsts {
            let path = dir.join(segment_name(first));
            if first == 0 {
                std::fs::remove_file(&path)?;
                continue;
            }
            let bytes = segment::read(&path)?;
            let mut frames = segment::Frames::new(&bytes);
            let mut last = first - 1;
            let mut ok = true;
            for f in frames.by_ref() {
                if f.seq != last + 1 {
                    ok = false;
                    break;
                }
                last = f.seq;
            }
            let valid = frames.valid;
            if !ok || !frames.clean() {
                tracing::warn!(segment = %path.display(), kept = last + 1 - first, "historian: cut off a torn or damaged end");
                let f = OpenOptions::new().write(true).open(&path)?;
                f.set_len(valid as u64)?;
                f.sync_all()?;
            }
            let prev_last = segments.back().map(|s: &Segment| s.last);
            if last < first || last <= meta.floor || prev_last.is_some_and(|p| first <= p) {
                // Empty, forgotten, or overlapping an earlier segment.
                std::fs::remove_file(&path)?;
                continue;
            }
            segments.push_back(Segment { first, last, path });
        }
        fsync_dir(dir)?;
        let next_seq = segments.back().map_or(0, |s| s.last).max(meta.floor) + 1;
        Ok(Buffer {
            dir: dir.to_path_buf(),
            cfg,
            meta,
            segments,
            tail: None,
            next_seq,
            poisoned: false,
        })
    }

    /// The stream's id.
    pub fn stream(&self) -> &str {
        &self.meta.stream
    }

    /// The seq the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Records waiting for acknowledgement.
    pub fn pending_count(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.last - s.last.min(self.meta.floor.max(s.first - 1)))
            .sum()
    }

    pub fn status(&self) -> BufferStatus {
        BufferStatus {
            stream: self.meta.stream.clone(),
            pending: self.pending_count(),
            dropped: self.meta.dropped,
        }
    }

    /// Appends a batch (in order) and fsyncs it; returns the last seq given.
    /// When the bound is reached the oldest records waiting are dropped first.
    pub fn append(&mut self, items: Vec<(i64, TagName, RecordBody)>) -> io::Result<Option<u64>> {
        if self.poisoned {
            return Err(io::Error::other(
                "an earlier write failed: open the historian buffer again",
            ));
        }
        if items.is_empty() {
            return Ok(None);
        }
        let max = self.cfg.max_records;
        let mut items = items;
        let mut dropped_new = 0;
        if items.len() as u64 > max {
            // A batch larger than the whole bound keeps its newest records.
            dropped_new = items.len() as u64 - max;
            items.drain(..dropped_new as usize);
        }
        let pending = self.pending_count();
        let excess = (pending + items.len() as u64).saturating_sub(max);
        if excess > 0 || dropped_new > 0 {
            let floor = self.nth_pending(excess).unwrap_or(self.meta.floor);
            self.meta.dropped += excess + dropped_new;
            self.meta.floor = floor;
            write_meta(&self.dir, &self.meta)?;
            self.delete_forgotten()?;
            tracing::warn!(
                dropped = excess + dropped_new,
                total = self.meta.dropped,
                "historian buffer full: oldest records dropped"
            );
        }
        let mut bytes = Vec::new();
        let mut seq = self.next_seq;
        for (time_ms, tag, body) in items {
            let r = Record {
                seq,
                time_ms,
                tag,
                body,
            };
            self.ensure_segment(seq)?;
            segment::encode(&r, &mut bytes)?;
            let seg = self.segments.back_mut().expect("a segment");
            seg.last = seq;
            seq += 1;
            if seg.last + 1 - seg.first >= self.cfg.segment_records {
                self.flush_tail(&mut bytes)?;
                self.next_seq = seq;
                self.tail = None; // the next record opens a new segment
            }
        }
        self.flush_tail(&mut bytes)?;
        self.next_seq = seq;
        Ok(Some(seq - 1))
    }

    /// The seq of the `n`th waiting record (1-based); None for n = 0.
    fn nth_pending(&self, n: u64) -> Option<u64> {
        let mut left = n;
        if left == 0 {
            return None;
        }
        let mut last = None;
        for s in &self.segments {
            let from = s.first.max(self.meta.floor + 1);
            if from > s.last {
                continue;
            }
            let here = s.last - from + 1;
            if left <= here {
                return Some(from + left - 1);
            }
            left -= here;
            last = Some(s.last);
        }
        last
    }

    fn ensure_segment(&mut self, seq: u64) -> io::Result<()> {
        if self.tail.is_some() {
            return Ok(());
        }
        let reuse = self
            .segments
            .back()
            .is_some_and(|s| s.last + 1 == seq && s.last + 1 - s.first < self.cfg.segment_records);
        if !reuse {
            let path = self.dir.join(segment_name(seq));
            self.segments.push_back(Segment {
                first: seq,
                last: seq - 1,
                path,
            });
        }
        let path = &self.segments.back().expect("a segment").path;
        let f = OpenOptions::new().create(true).append(true).open(path)?;
        if !reuse {
            fsync_dir(&self.dir)?;
        }
        self.tail = Some(f);
        Ok(())
    }

    fn flush_tail(&mut self, bytes: &mut Vec<u8>) -> io::Result<()> {
        if bytes.is_empty() {
            return Ok(());
        }
        let f = self.tail.as_mut().expect("an open segment");
        let written = f.write_all(bytes).and_then(|()| f.sync_data());
        bytes.clear();
        if let Err(e) = written {
            // Whatever reached the file is cut off when the buffer is opened
            // again; until then, no more appends to a file in an unknown state.
            self.tail = None;
            self.poisoned = true;
            let durable = self.next_seq - 1;
            for s in self.segments.iter_mut() {
                s.last = s.last.min(durable).max(s.first - 1);
            }
            return Err(e);
        }
        Ok(())
    }

    /// The server has stored every record of `stream` up to `seq`: forget them.
    /// Another stream's acknowledgement, or one of records not yet given out, changes nothing.
    pub fn ack(&mut self, stream: &str, seq: u64) -> io::Result<bool> {
        if stream != self.meta.stream || seq <= self.meta.floor || seq >= self.next_seq {
            return Ok(false);
        }
        self.meta.floor = seq;
        write_meta(&self.dir, &self.meta)?;
        self.delete_forgotten()?;
        Ok(true)
    }

    fn delete_forgotten(&mut self) -> io::Result<()> {
        let mut any = false;
        while let Some(s) = self.segments.front() {
            if s.last > self.meta.floor {
                break;
            }
            if self.segments.len() == 1 {
                self.tail = None;
            }
            let s = self.segments.pop_front().expect("a segment");
            std::fs::remove_file(&s.path)?;
            any = true;
        }
        if any {
            fsync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The first `limit` records waiting, in order of seq.
    pub fn pending(&self, limit: usize) -> io::Result<Vec<Record>> {
        let mut out = Vec::new();
        for s in &self.segments {
            if out.len() >= limit {
                break;
            }
            if s.last <= self.meta.floor {
                continue;
            }
            let bytes = segment::read(&s.path)?;
            for f in segment::Frames::new(&bytes) {
                if f.seq > s.last || out.len() >= limit {
                    break;
                }
                if f.seq > self.meta.floor {
                    out.push(segment::decode(&f)?);
                }
            }
        }
        Ok(out)
    }
}

fn write_meta(dir: &Path, meta: &Meta) -> io::Result<()> {
    let tmp = dir.join("state.json.tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&serde_json::to_vec(meta).map_err(io::Error::other)?)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, dir.join("state.json"))?;
    fsync_dir(dir)
}

#[cfg(test)]
mod tests;
