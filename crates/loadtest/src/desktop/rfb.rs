//! A minimal RFB 3.8 viewer, sans-IO, as the benchmark's browser: security
//! None, a shared ClientInit, SetEncodings with the encodings asked for (Raw,
//! ZRLE), a full FramebufferUpdateRequest and then an incremental one for the
//! whole screen after each update, as noVNC does. It frames what the server
//! sends without decoding pixels: a Raw rectangle is w × h × bytes-per-pixel
//! skipped, a ZRLE one its length-prefixed zlib data skipped.

use anyhow::bail;

/// Encodings the viewer can frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    Raw,
    Zrle,
}

impl Encoding {
    fn number(self) -> i32 {
        match self {
            Encoding::Raw => 0,
            Encoding::Zrle => 16,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::Raw => "raw",
            Encoding::Zrle => "zrle",
        }
    }
}

impl std::str::FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "raw" => Ok(Encoding::Raw),
            "zrle" => Ok(Encoding::Zrle),
            _ => Err(format!("{s:?}: the desktop mode knows raw and zrle")),
        }
    }
}

const LAST_RECT: i32 = -224;
const DESKTOP_SIZE: i32 = -223;

/// What the viewer waits for next: a fixed number of bytes, then [`Rfb::step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Version,
    SecurityCount,
    SecurityTypes(u8),
    SecurityResult,
    FailureLength,
    Failure(usize),
    ServerInit,
    Name,
    Message,
    UpdateHeader,
    Rect { left: u16 },
    ZrleLength { left: u16 },
    ColourMap,
    CutText,
}

/// One whole FramebufferUpdate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Update {
    /// Bytes of the message, header and rectangles.
    pub bytes: u64,
    pub rects: u32,
    /// Pixels covered by its rectangles.
    pub pixels: u64,
}

/// What [`Rfb::feed`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// ServerInit arrived: the screen's size; SetEncodings and the first
    /// (full) request are in the output.
    Ready { width: u16, height: u16 },
    /// An update is complete; the next incremental request is in the output.
    Update(Update),
}

/// The viewer's state.
pub struct Rfb {
    encodings: Vec<Encoding>,
    state: State,
    /// The bytes of the current fixed-size item gathered so far.
    head: Vec<u8>,
    /// Bytes to pass over (pixel data, names, cut text) before `after_skip`.
    skip: u64,
    after_skip: State,
    bytes_per_pixel: u64,
    pub width: u16,
    pub height: u16,
    update: Update,
    /// Bytes taken so far, and where the current update started.
    pos: u64,
    update_start: u64,
    /// Every byte the server sent.
    pub received: u64,
}

impl Rfb {
    pub fn new(encodings: &[Encoding]) -> Rfb {
        Rfb {
            encodings: encodings.to_vec(),
            state: State::Version,
            head: Vec::with_capacity(64),
            skip: 0,
            after_skip: State::Message,
            bytes_per_pixel: 4,
            width: 0,
            height: 0,
            update: Update {
                bytes: 0,
                rects: 0,
                pixels: 0,
            },
            pos: 0,
            update_start: 0,
            received: 0,
        }
    }

    fn need(&self) -> usize {
        match self.state {
            State::Version => 12,
            State::SecurityCount => 1,
            State::SecurityTypes(n) => usize::from(n),
            State::SecurityResult | State::FailureLength => 4,
            State::Failure(n) => n,
            State::ServerInit => 24,
            State::Name => 0,
            State::Message => 1,
            State::UpdateHeader => 3,
            State::Rect { .. } => 12,
            State::ZrleLength { .. } => 4,
            State::ColourMap => 5,
            State::CutText => 7,
        }
    }

    /// The request for the whole screen.
    fn request(&self, incremental: bool, out: &mut Vec<u8>) {
        out.extend_from_slice(&[3, u8::from(incremental), 0, 0, 0, 0]);
        out.extend_from_slice(&self.width.to_be_bytes());
        out.extend_from_slice(&self.height.to_be_bytes());
    }

    /// Takes what the server sent; what to send it goes to `out`.
    pub fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> anyhow::Result<Vec<Event>> {
        self.received += data.len() as u64;
        let mut events = Vec::new();
        loop {
            if self.skip > 0 {
                let n = self.skip.min(data.len() as u64);
                self.skip -= n;
                self.pos += n;
                data = &data[n as usize..];
                if self.skip > 0 {
                    return Ok(events);
                }
                self.state = self.after_skip;
                self.done_rect(out, &mut events);
            }
            let need = self.need();
            if need > 0 {
                let take = (need - self.head.len()).min(data.len());
                self.head.extend_from_slice(&data[..take]);
                self.pos += take as u64;
                data = &data[take..];
                if self.head.len() < need {
                    return Ok(events);
                }
            }
            let head = std::mem::take(&mut self.head);
            self.step(&head, out, &mut events)?;
            self.head = head;
            self.head.clear();
            if data.is_empty() && self.skip == 0 && self.need() > 0 {
                return Ok(events);
            }
        }
    }

    /// After a rectangle's data: the update goes on, or it is complete.
    fn done_rect(&mut self, out: &mut Vec<u8>, events: &mut Vec<Event>) {
        if let State::Rect { left: 0 } = self.state {
            self.state = State::Message;
            self.update.bytes = self.pos - self.update_start;
            events.push(Event::Update(self.update));
            self.request(true, out);
        }
    }

    fn step(&mut self, h: &[u8], out: &mut Vec<u8>, events: &mut Vec<Event>) -> anyhow::Result<()> {
        let be32 = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let be16 = |b: &[u8]| u16::from_be_bytes([b[0], b[1]]);
        self.state = match self.state {
            State::Version => {
                if h != b"RFB 003.008\n" {
                    bail!(
                        "the server speaks {:?}, not RFB 3.8",
                        String::from_utf8_lossy(h)
                    );
                }
                out.extend_from_slice(b"RFB 003.008\n");
                State::SecurityCount
            }
            State::SecurityCount if h[0] == 0 => State::FailureLength,
            State::SecurityCount => State::SecurityTypes(h[0]),
            State::SecurityTypes(_) => {
                if !h.contains(&1) {
                    bail!("the server offers security types {h:?}, not None (1)");
                }
                out.push(1);
                State::SecurityResult
            }
            State::SecurityResult if be32(h) == 0 => {
                // ClientInit: shared.
                out.push(1);
                State::ServerInit
            }
            State::SecurityResult => State::FailureLength,
            State::FailureLength => State::Failure(be32(h).min(4096) as usize),
            State::Failure(_) => bail!("the server refused: {}", String::from_utf8_lossy(h)),
            State::ServerInit => {
                self.width = be16(&h[0..2]);
                self.height = be16(&h[2..4]);
                self.bytes_per_pixel = u64::from(h[4]).div_ceil(8);
                self.skip = u64::from(be32(&h[20..24]));
                self.after_skip = State::Name;
                State::Name
            }
            State::Name => {
                let n = self.encodings.len() as u16;
                out.extend_from_slice(&[2, 0]);
                out.extend_from_slice(&n.to_be_bytes());
                for e in &self.encodings {
                    out.extend_from_slice(&e.number().to_be_bytes());
                }
                self.request(false, out);
                events.push(Event::Ready {
                    width: self.width,
                    height: self.height,
                });
                State::Message
            }
            State::Message => match h[0] {
                0 => {
                    self.update_start = self.pos - 1;
                    self.update = Update {
                        bytes: 0,
                        rects: 0,
                        pixels: 0,
                    };
                    State::UpdateHeader
                }
                1 => State::ColourMap,
                2 => State::Message,
                3 => State::CutText,
                t => bail!("server message type {t} not expected"),
            },
            State::UpdateHeader => {
                let n = be16(&h[1..3]);
                if n == 0 {
                    self.state = State::Rect { left: 0 };
                    self.done_rect(out, events);
                    return Ok(());
                }
                State::Rect { left: n }
            }
            State::Rect { left } => {
                let (w, hh) = (u64::from(be16(&h[4..6])), u64::from(be16(&h[6..8])));
                let enc = i32::from_be_bytes([h[8], h[9], h[10], h[11]]);
                let left = left - 1;
                self.update.rects += 1;
                match enc {
                    0 => {
                        self.update.pixels += w * hh;
                        self.skip = w * hh * self.bytes_per_pixel;
                        self.after_skip = State::Rect { left };
                        if self.skip == 0 {
                            self.state = State::Rect { left };
                            self.done_rect(out, events);
                            return Ok(());
                        }
                        State::Rect { left }
                    }
                    16 => {
                        self.update.pixels += w * hh;
                        State::ZrleLength { left }
                    }
                    LAST_RECT | DESKTOP_SIZE => {
                        if enc == DESKTOP_SIZE {
                            (self.width, self.height) = (w as u16, hh as u16);
                        }
                        let left = if enc == LAST_RECT { 0 } else { left };
                        self.state = State::Rect { left };
                        self.done_rect(out, events);
                        return Ok(());
                    }
                    e => bail!("rectangle encoding {e} not asked for"),
                }
            }
            State::ZrleLength { left } => {
                self.skip = u64::from(be32(h));
                self.after_skip = State::Rect { left };
                if self.skip == 0 {
                    self.state = State::Rect { left };
                    self.done_rect(out, events);
                    return Ok(());
                }
                State::Rect { left }
            }
            State::ColourMap => {
                self.skip = u64::from(be16(&h[3..5])) * 6;
                self.after_skip = State::Message;
                State::Message
            }
            State::CutText => {
                self.skip = u64::from((be32(&h[3..7]) as i32).unsigned_abs());
                self.after_skip = State::Message;
                State::Message
            }
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake(rfb: &mut Rfb, feed: impl Fn(&mut Rfb, &[u8], &mut Vec<u8>) -> Vec<Event>) {
        let mut out = Vec::new();
        assert!(feed(rfb, b"RFB 003.008\n", &mut out).is_empty());
        assert_eq!(out, b"RFB 003.008\n");
        out.clear();
        feed(rfb, &[2, 2, 1], &mut out);
        assert_eq!(out, [1]);
        out.clear();
        feed(rfb, &[0, 0, 0, 0], &mut out);
        assert_eq!(out, [1]);
        out.clear();
        let mut init = vec![
            0, 4, 0, 2, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
        ];
        init.extend_from_slice(&[0, 0, 0, 3]);
        init.extend_from_slice(b"abc");
        let ev = feed(rfb, &init, &mut out);
        assert_eq!(
            ev,
            [Event::Ready {
                width: 4,
                height: 2
            }]
        );
        // SetEncodings [Raw, ZRLE], then the full request.
        assert_eq!(
            out,
            [
                2, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 16, 3, 0, 0, 0, 0, 0, 0, 4, 0, 2
            ]
        );
    }

    fn update() -> Vec<u8> {
        // Two rectangles: Raw 2×2 (16 bytes), ZRLE 2×2 with 5 bytes; a bell first.
        let mut m = vec![2, 0, 0, 0, 2];
        m.extend_from_slice(&[0, 0, 0, 0, 0, 2, 0, 2, 0, 0, 0, 0]);
        m.extend_from_slice(&[7; 16]);
        m.extend_from_slice(&[0, 2, 0, 0, 0, 2, 0, 2, 0, 0, 0, 16, 0, 0, 0, 5]);
        m.extend_from_slice(&[9; 5]);
        m
    }

    #[test]
    fn frames_the_handshake_and_updates_whole_or_byte_by_byte() {
        let whole = |r: &mut Rfb, d: &[u8], o: &mut Vec<u8>| r.feed(d, o).unwrap();
        let bytewise = |r: &mut Rfb, d: &[u8], o: &mut Vec<u8>| {
            d.iter()
                .flat_map(|b| r.feed(std::slice::from_ref(b), o).unwrap())
                .collect()
        };
        for feed in [
            &whole as &dyn Fn(&mut Rfb, &[u8], &mut Vec<u8>) -> Vec<Event>,
            &bytewise,
        ] {
            let mut rfb = Rfb::new(&[Encoding::Raw, Encoding::Zrle]);
            handshake(&mut rfb, feed);
            let mut out = Vec::new();
            let m = update();
            let ev = feed(&mut rfb, &[&m[..], &m[..]].concat(), &mut out);
            let u = Update {
                bytes: (m.len() - 1) as u64,
                rects: 2,
                pixels: 8,
            };
            assert_eq!(ev, [Event::Update(u), Event::Update(u)]);
            // An incremental request for the whole screen after each.
            assert_eq!(out, [[3, 1, 0, 0, 0, 0, 0, 4, 0, 2]; 2].concat());
        }
    }

    #[test]
    fn a_refusal_and_a_surprise_are_errors() {
        let mut out = Vec::new();
        let mut rfb = Rfb::new(&[Encoding::Raw]);
        rfb.feed(b"RFB 003.008\n", &mut out).unwrap();
        let e = rfb
            .feed(&[0, 0, 0, 0, 2, b'n', b'o'], &mut out)
            .unwrap_err();
        assert!(e.to_string().contains("no"), "{e}");
        let mut rfb = Rfb::new(&[Encoding::Raw]);
        assert!(rfb.feed(b"RFB 003.003\n", &mut out).is_err());
    }
}
