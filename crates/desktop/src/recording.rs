//! The recording format of a desktop session: what the VNC or RDP server
//! sent the browser, with the time it was sent, so it can be replayed.
//!
//! ```text
//! "DBRFB1\n" (VNC) or "DBRDP1\n" (RDP)        7-byte header
//! [u32 BE t_ms][u32 BE len][len bytes] ...     frames, len ≤ 1 MiB
//! ```
//!
//! An RDP recording's first frame is the RDCleanPath response a replaying
//! client is answered with (`rdp::RdpBridge::replay_response`); the frames
//! after it are the RDP server's stream after TLS (and after CredSSP).
//!
//! `t_ms` is milliseconds since the recording started and never decreases
//! from one frame to the next. The replay side is JavaScript reading with a
//! `DataView`, so the format stays this simple. A recording still being
//! written may end in the middle of a frame; readers report that as
//! [`RecordingError::Truncated`] after the complete frames.

/// What every recording of a VNC desktop starts with.
pub const HEADER: &[u8; 7] = b"DBRFB1\n";
/// What every recording of an RDP desktop starts with.
pub const RDP_HEADER: &[u8; 7] = b"DBRDP1\n";
/// Longest frame body.
pub const MAX_FRAME_LEN: usize = 1024 * 1024;
/// Bytes before each frame's body.
pub const FRAME_HEADER_LEN: usize = 8;

/// Writes frames: the caller writes [`HEADER`] once, then whatever
/// [`Recorder::frame`] returns, in order.
#[derive(Debug, Default, Clone)]
pub struct Recorder {
    last_t_ms: u32,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// The bytes recording `data`, sent `t_ms` milliseconds after the start:
    /// one frame, or several of at most [`MAX_FRAME_LEN`] bytes each if
    /// `data` is longer; nothing if `data` is empty. A `t_ms` earlier than the
    /// previous frame's (a clock stepping back) is recorded as the previous
    /// one, so readers always see time standing still or moving forward.
    pub fn frame(&mut self, t_ms: u32, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(framed_len(data.len()));
        self.frame_into(t_ms, data, &mut out);
        out
    }

    /// [`Recorder::frame`], appended to `out` (no copy of its own).
    pub fn frame_into(&mut self, t_ms: u32, data: &[u8], out: &mut Vec<u8>) {
        out.reserve(framed_len(data.len()));
        for (header, chunk) in self.frame_parts(t_ms, data) {
            out.extend_from_slice(&header);
            out.extend_from_slice(chunk);
        }
    }

    /// [`Recorder::frame`] as parts, for a writer that does not copy the
    /// data: each frame's header and its body, a slice of `data`.
    pub fn frame_parts<'a>(
        &mut self,
        t_ms: u32,
        data: &'a [u8],
    ) -> impl Iterator<Item = ([u8; FRAME_HEADER_LEN], &'a [u8])> + use<'a> {
        let t_ms = t_ms.max(self.last_t_ms);
        self.last_t_ms = t_ms;
        data.chunks(MAX_FRAME_LEN).map(move |chunk| {
            let mut header = [0u8; FRAME_HEADER_LEN];
            header[..4].copy_from_slice(&t_ms.to_be_bytes());
            header[4..].copy_from_slice(&(chunk.len() as u32).to_be_bytes());
            (header, chunk)
        })
    }
}

/// How many bytes recording `len` bytes takes (its frames' headers with it).
pub fn framed_len(len: usize) -> usize {
    len + len.div_ceil(MAX_FRAME_LEN) * FRAME_HEADER_LEN
}

/// One recorded piece of the server→browser stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    pub t_ms: u32,
    pub data: &'a [u8],
}

/// Why a recording cannot be read (further).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecordingError {
    #[error("not a Drawbridge desktop recording (no DBRFB1 or DBRDP1 header)")]
    BadHeader,
    #[error("the recording ends inside the frame at byte {offset}")]
    Truncated { offset: usize },
    #[error("the frame at byte {offset} is {len} bytes long (limit {MAX_FRAME_LEN})")]
    Oversize { offset: usize, len: u32 },
    #[error("the frame at byte {offset} goes back in time ({t_ms} ms after {previous} ms)")]
    TimeWentBack {
        offset: usize,
        t_ms: u32,
        previous: u32,
    },
}

/// Reads the frames of a recording, in order. After the first error it
/// yields nothing more.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    bytes: &'a [u8],
    offset: usize,
    previous: u32,
    header_checked: bool,
    done: bool,
}

/// Iterates over the frames of a whole recording (header included).
pub fn iter_frames(bytes: &[u8]) -> Frames<'_> {
    Frames {
        bytes,
        offset: 0,
        previous: 0,
        header_checked: false,
        done: false,
    }
}

/// Iterates over frames that continue a recording read in parts: `bytes`
/// start at a frame (no header), no earlier than `previous` ms. Error offsets
/// count from the start of `bytes`; a `Truncated` frame is one whose rest
/// comes with the next part ([`Frames::offset`] says where it starts).
pub fn iter_frames_after(bytes: &[u8], previous: u32) -> Frames<'_> {
    Frames {
        bytes,
        offset: 0,
        previous,
        header_checked: true,
        done: false,
    }
}

/// All frames of a recording, or the first error.
pub fn frames(bytes: &[u8]) -> Result<Vec<Frame<'_>>, RecordingError> {
    iter_frames(bytes).collect()
}

impl<'a> Frames<'a> {
    /// Where the next frame starts: everything before it was read (after a
    /// `Truncated` error, where the truncated frame starts).
    pub fn offset(&self) -> usize {
        self.offset
    }

    /// The time of the last frame read (or the `previous` it started from).
    pub fn previous(&self) -> u32 {
        self.previous
    }

    fn next_frame(&mut self) -> Option<Result<Frame<'a>, RecordingError>> {
        if !self.header_checked {
            self.header_checked = true;
            if !self.bytes.starts_with(HEADER) && !self.bytes.starts_with(RDP_HEADER) {
                return Some(Err(RecordingError::BadHeader));
            }
            self.offset = HEADER.len();
        }
        let offset = self.offset;
        let rest = &self.bytes[offset..];
        if rest.is_empty() {
            return None;
        }
        let Some(head) = rest.get(..FRAME_HEADER_LEN) else {
            return Some(Err(RecordingError::Truncated { offset }));
        };
        let t_ms = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let len = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        if len as usize > MAX_FRAME_LEN {
            return Some(Err(RecordingError::Oversize { offset, len }));
        }
        if t_ms < self.previous {
            return Some(Err(RecordingError::TimeWentBack {
                offset,
                t_ms,
                previous: self.previous,
            }));
        }
        let end = FRAME_HEADER_LEN + len as usize;
        let Some(data) = rest.get(FRAME_HEADER_LEN..end) else {
            return Some(Err(RecordingError::Truncated { offset }));
        };
        self.previous = t_ms;
        self.offset += end;
        Some(Ok(Frame { t_ms, data }))
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, RecordingError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_frame();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recording_read_in_parts_gives_the_frames_of_the_whole() {
        let whole = recording(&[(1, b"abc"), (5, &[7u8; 300]), (9, b""), (12, b"z")]);
        let want: Vec<(u32, Vec<u8>)> = iter_frames(&whole)
            .map(|f| f.map(|f| (f.t_ms, f.data.to_vec())))
            .collect::<Result<_, _>>()
            .unwrap();
        // Every place to cut it in two, as a reader of chunks would meet it.
        for cut in HEADER.len()..whole.len() {
            let mut got = Vec::new();
            let mut first = iter_frames(&whole[..cut]);
            for f in first.by_ref() {
                match f {
                    Ok(f) => got.push((f.t_ms, f.data.to_vec())),
                    Err(e) => {
                        assert!(matches!(e, RecordingError::Truncated { .. }), "{e}");
                        break;
                    }
                }
            }
            let rest = &whole[first.offset()..];
            for f in iter_frames_after(rest, first.previous()) {
                let f = f.unwrap();
                got.push((f.t_ms, f.data.to_vec()));
            }
            assert_eq!(got, want, "cut at {cut}");
        }
        // A continuing part is held to the time it continues from.
        let later = &whole[HEADER.len()..];
        assert!(matches!(
            iter_frames_after(later, 2).next(),
            Some(Err(RecordingError::TimeWentBack { offset: 0, .. }))
        ));
    }

    fn recording(frames: &[(u32, &[u8])]) -> Vec<u8> {
        let mut recorder = Recorder::new();
        let mut out = HEADER.to_vec();
        for (t, data) in frames {
            out.extend(recorder.frame(*t, data));
        }
        out
    }

    #[test]
    fn frame_layout_is_time_length_bytes_big_endian() {
        let bytes = recording(&[(0x0102_0304, b"abc")]);
        assert_eq!(
            bytes,
            b"DBRFB1\n\x01\x02\x03\x04\x00\x00\x00\x03abc".to_vec()
        );
    }

    #[test]
    fn written_frames_read_back_in_order() {
        let bytes = recording(&[
            (0, b"RFB 003.008\n"),
            (5, b"\x01\x01"),
            (5, b"x"),
            (900, b""),
        ]);
        let read = frames(&bytes).unwrap();
        assert_eq!(
            read,
            vec![
                Frame {
                    t_ms: 0,
                    data: b"RFB 003.008\n"
                },
                Frame {
                    t_ms: 5,
                    data: b"\x01\x01"
                },
                Frame {
                    t_ms: 5,
                    data: b"x"
                },
            ]
        );
    }

    #[test]
    fn header_alone_is_an_empty_recording() {
        assert_eq!(frames(HEADER).unwrap(), vec![]);
        assert_eq!(frames(RDP_HEADER).unwrap(), vec![]);
        let mut rdp = RDP_HEADER.to_vec();
        rdp.extend(Recorder::new().frame(3, b"rsp"));
        assert_eq!(
            frames(&rdp).unwrap(),
            vec![Frame {
                t_ms: 3,
                data: b"rsp"
            }]
        );
    }

    #[test]
    fn missing_or_wrong_header_is_refused() {
        assert_eq!(frames(b"").unwrap_err(), RecordingError::BadHeader);
        assert_eq!(frames(b"DBRFB2\n").unwrap_err(), RecordingError::BadHeader);
        assert_eq!(
            frames(b"RFB 003.008\n").unwrap_err(),
            RecordingError::BadHeader
        );
    }

    #[test]
    fn clock_stepping_back_is_recorded_as_standing_still() {
        let bytes = recording(&[(100, b"a"), (40, b"b")]);
        let read = frames(&bytes).unwrap();
        assert_eq!(read[1].t_ms, 100);
    }

    #[test]
    fn long_data_is_split_into_frames_of_at_most_one_mib() {
        let data = vec![7u8; 2 * MAX_FRAME_LEN + 3];
        let bytes = recording(&[(9, &data)]);
        let read = frames(&bytes).unwrap();
        let lens: Vec<usize> = read.iter().map(|f| f.data.len()).collect();
        assert_eq!(lens, vec![MAX_FRAME_LEN, MAX_FRAME_LEN, 3]);
        assert!(read.iter().all(|f| f.t_ms == 9));
        let joined: Vec<u8> = read.iter().flat_map(|f| f.data.iter().copied()).collect();
        assert_eq!(joined, data);
    }

    #[test]
    fn truncated_frame_stops_the_reader_after_the_complete_ones() {
        let bytes = recording(&[(1, b"one"), (2, b"two")]);
        for cut in HEADER.len() + 11 + 1..bytes.len() {
            let mut it = iter_frames(&bytes[..cut]);
            assert_eq!(
                it.next(),
                Some(Ok(Frame {
                    t_ms: 1,
                    data: b"one"
                }))
            );
            assert_eq!(
                it.next(),
                Some(Err(RecordingError::Truncated { offset: 18 })),
                "cut at {cut}"
            );
            assert_eq!(it.next(), None);
        }
    }

    #[test]
    fn oversize_frame_is_refused() {
        let mut bytes = HEADER.to_vec();
        bytes.extend_from_slice(&0u32.to_be_bytes());
        bytes.extend_from_slice(&(MAX_FRAME_LEN as u32 + 1).to_be_bytes());
        bytes.extend(vec![0u8; MAX_FRAME_LEN + 1]);
        assert_eq!(
            frames(&bytes).unwrap_err(),
            RecordingError::Oversize {
                offset: 7,
                len: MAX_FRAME_LEN as u32 + 1
            }
        );
    }

    #[test]
    fn frame_going_back_in_time_is_refused() {
        let mut bytes = HEADER.to_vec();
        for t in [10u32, 9] {
            bytes.extend_from_slice(&t.to_be_bytes());
            bytes.extend_from_slice(&1u32.to_be_bytes());
            bytes.push(b'z');
        }
        assert_eq!(
            frames(&bytes).unwrap_err(),
            RecordingError::TimeWentBack {
                offset: 16,
                t_ms: 9,
                previous: 10
            }
        );
    }

    #[test]
    fn reader_never_panics_on_garbage() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for round in 0..2000 {
            let len = round % 64;
            let mut bytes = if round % 2 == 0 {
                HEADER.to_vec()
            } else {
                Vec::new()
            };
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                bytes.push(x as u8);
            }
            let _ = frames(&bytes);
        }
    }
}
