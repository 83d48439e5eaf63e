//! The historian's segment files: one record after another, each framed as
//!
//! ```text
//! len: u32 LE   bytes of what follows the checksum (8 + JSON)
//! crc: u32 LE   CRC-32C (Castagnoli) of those bytes
//! seq: u64 LE   the record's sequence number
//! JSON          the record (`drawbridge_proto::data::Record`)
//! ```
//!
//! A segment holds consecutive sequence numbers. Reading stops at the first
//! frame that is cut short, fails its checksum, is longer than
//! [`MAX_FRAME`] or does not continue the sequence: what follows is a torn
//! write (the process or the power died mid-append) and is cut off.

use drawbridge_proto::data::Record;
use std::io::{self, Read};

/// Largest payload of one frame (a record is a few hundred bytes).
pub const MAX_FRAME: usize = 16 * 1024;
const HEADER: usize = 8;
const CRC: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// Appends one record's frame to `out`.
pub fn encode(r: &Record, out: &mut Vec<u8>) -> io::Result<()> {
    let json = serde_json::to_vec(r).map_err(io::Error::other)?;
    let mut payload = Vec::with_capacity(8 + json.len());
    payload.extend_from_slice(&r.seq.to_le_bytes());
    payload.extend_from_slice(&json);
    if payload.len() > MAX_FRAME {
        return Err(io::Error::other("record too large for the historian"));
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&CRC.checksum(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    Ok(())
}

/// One intact frame.
pub struct Frame<'a> {
    pub seq: u64,
    pub json: &'a [u8],
}

/// Walks the intact frames of a segment's bytes.
pub struct Frames<'a> {
    bytes: &'a [u8],
    /// Bytes of intact frames so far.
    pub valid: usize,
    prev: Option<u64>,
}

impl<'a> Frames<'a> {
    pub fn new(bytes: &'a [u8]) -> Frames<'a> {
        Frames {
            bytes,
            valid: 0,
            prev: None,
        }
    }

    /// Whether every byte belonged to an intact frame (after iterating to the end).
    pub fn clean(&self) -> bool {
        self.valid == self.bytes.len()
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Frame<'a>;
    fn next(&mut self) -> Option<Frame<'a>> {
        let rest = &self.bytes[self.valid..];
        let header = rest.get(..HEADER)?;
        let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
        let crc = u32::from_le_bytes(header[4..8].try_into().ok()?);
        if !(9..=MAX_FRAME).contains(&len) {
            return None;
        }
        let payload = rest.get(HEADER..HEADER + len)?;
        if CRC.checksum(payload) != crc {
            return None;
        }
        let seq = u64::from_le_bytes(payload[..8].try_into().ok()?);
        if self.prev.is_some_and(|p| p.checked_add(1) != Some(seq)) {
            return None;
        }
        self.prev = Some(seq);
        self.valid += HEADER + len;
        Some(Frame {
            seq,
            json: &payload[8..],
        })
    }
}

/// A frame's record, checked against the sequence number it was framed with.
pub fn decode(f: &Frame<'_>) -> io::Result<Record> {
    let r: Record = serde_json::from_slice(f.json).map_err(io::Error::other)?;
    if r.seq != f.seq {
        return Err(io::Error::other("record and frame disagree on seq"));
    }
    Ok(r)
}

/// Reads a whole segment file.
pub fn read(path: &std::path::Path) -> io::Result<Vec<u8>> {
    let mut f = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drawbridge_proto::TagName;
    use drawbridge_proto::data::{Quality, RecordBody};

    fn rec(seq: u64) -> Record {
        Record {
            seq,
            time_ms: 1_700_000_000_000 + seq as i64,
            tag: TagName::try_from("t").unwrap(),
            body: RecordBody::Point {
                value: Some(seq as f64),
                quality: Quality::Good,
            },
        }
    }

    #[test]
    fn frames_round_trip_and_stop_at_damage() {
        let mut bytes = Vec::new();
        for s in 5..8 {
            encode(&rec(s), &mut bytes).unwrap();
        }
        let mut it = Frames::new(&bytes);
        let got: Vec<Record> = it.by_ref().map(|f| decode(&f).unwrap()).collect();
        assert_eq!(got, vec![rec(5), rec(6), rec(7)]);
        assert!(it.clean());
        // Every cut inside the last frame leaves the first two.
        let two = {
            let mut b = Vec::new();
            encode(&rec(5), &mut b).unwrap();
            encode(&rec(6), &mut b).unwrap();
            b.len()
        };
        for cut in two..bytes.len() {
            let mut it = Frames::new(&bytes[..cut]);
            assert_eq!(it.by_ref().count(), 2, "cut at {cut}");
            assert_eq!(it.valid, two);
            assert_eq!(it.clean(), cut == two);
        }
        // A flipped byte anywhere in the last frame is caught.
        for i in two..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x40;
            assert_eq!(Frames::new(&b).count(), 2, "flip at {i}");
        }
        // A frame out of sequence ends the segment.
        let mut gap = Vec::new();
        encode(&rec(1), &mut gap).unwrap();
        encode(&rec(3), &mut gap).unwrap();
        assert_eq!(Frames::new(&gap).count(), 1);
        // Zeros (a file extended but never written) are no frame.
        assert_eq!(Frames::new(&[0u8; 64]).count(), 0);
    }
}
