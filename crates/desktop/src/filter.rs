//! Frames the browser's client-to-server messages after the handshake and
//! drops the inputs in view-only mode.
//!
//! RFB messages carry no length, so every message type the browser may send
//! has to be known here; an unknown one ends the connection, because nothing
//! after it could be framed safely. Sizes are from the RFB community
//! specification (rfbproto) and checked against what noVNC 1.3 sends.

use crate::RfbError;

/// Most encodings in one SetEncodings (noVNC sends about 20).
pub(crate) const MAX_ENCODINGS: u16 = 1024;
/// Longest ClientCutText body, in either the plain or the extended form.
pub(crate) const MAX_CUT_TEXT: u32 = 1024 * 1024;
/// Longest ClientFence payload (the specification's limit).
pub(crate) const MAX_FENCE_PAYLOAD: u8 = 64;
/// Most screens in one SetDesktopSize.
pub(crate) const MAX_SCREENS: u8 = 16;
/// The longest message kept whole (SetEncodings with `MAX_ENCODINGS`);
/// ClientCutText bodies stream through and are never kept.
const MAX_KEPT: usize = 4 + 4 * MAX_ENCODINGS as usize;

/// How one message is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Framing {
    /// Bytes kept and handled as a whole (the whole message, or the header of
    /// one with a streamed body).
    head: usize,
    /// Bytes that follow the head and stream through (ClientCutText text).
    body: u64,
    /// An input event: dropped in view-only mode.
    input: bool,
}

const fn fixed(head: usize, input: bool) -> Option<Framing> {
    Some(Framing {
        head,
        body: 0,
        input,
    })
}

fn too_long(message: &'static str, count: u64, unit: &'static str, limit: u64) -> RfbError {
    RfbError::ClientMessageTooLong {
        message,
        count,
        unit,
        limit,
    }
}

/// The layout of the message at the start of `b` (not empty), or None while
/// the bytes that give its length have not all arrived.
fn framing(b: &[u8]) -> Result<Option<Framing>, RfbError> {
    Ok(match b[0] {
        // SetPixelFormat: type, 3 padding, 16-byte pixel format.
        0 => fixed(20, false),
        // SetEncodings: type, padding, u16 count, count × s32.
        2 => {
            let Some(n) = b.get(2..4) else {
                return Ok(None);
            };
            let n = u16::from_be_bytes([n[0], n[1]]);
            if n > MAX_ENCODINGS {
                let limit = u64::from(MAX_ENCODINGS);
                return Err(too_long("SetEncodings", n.into(), "encodings", limit));
            }
            fixed(4 + 4 * usize::from(n), false)
        }
        // FramebufferUpdateRequest: type, incremental, x, y, w, h.
        3 => fixed(10, false),
        // KeyEvent: type, down, 2 padding, u32 keysym.
        4 => fixed(8, true),
        // PointerEvent: type, buttons, x, y.
        5 => fixed(6, true),
        // ClientCutText: type, 3 padding, s32 length, text. A negative length
        // is the extended-clipboard form with |length| bytes following.
        6 => {
            let Some(l) = b.get(4..8) else {
                return Ok(None);
            };
            let len = i32::from_be_bytes([l[0], l[1], l[2], l[3]]).unsigned_abs();
            if len > MAX_CUT_TEXT {
                let limit = u64::from(MAX_CUT_TEXT);
                return Err(too_long("ClientCutText", len.into(), "bytes", limit));
            }
            Some(Framing {
                head: 8,
                body: len.into(),
                input: true,
            })
        }
        // EnableContinuousUpdates: type, enable, x, y, w, h.
        150 => fixed(10, false),
        // ClientFence: type, 3 padding, u32 flags, u8 length, payload.
        248 => {
            let Some(&n) = b.get(8) else {
                return Ok(None);
            };
            if n > MAX_FENCE_PAYLOAD {
                let limit = u64::from(MAX_FENCE_PAYLOAD);
                return Err(too_long("ClientFence", n.into(), "bytes", limit));
            }
            fixed(9 + usize::from(n), false)
        }
        // xvp: type, padding, version, code (shutdown, reboot, reset).
        250 => fixed(4, true),
        // SetDesktopSize: type, padding, w, h, u8 screens, padding, screens × 16.
        251 => {
            let Some(&n) = b.get(6) else {
                return Ok(None);
            };
            if n > MAX_SCREENS {
                let limit = u64::from(MAX_SCREENS);
                return Err(too_long("SetDesktopSize", n.into(), "screens", limit));
            }
            fixed(8 + 16 * usize::from(n), true)
        }
        // QEMU: type, submessage type, then the submessage's fields.
        255 => match b.get(1) {
            None => None,
            // Extended key event: u16 down, u32 keysym, u32 keycode.
            Some(0) => fixed(12, true),
            // Audio: u16 operation (0 enable, 1 disable, 2 set format with
            // u8 sample format, u8 channels, u32 frequency).
            Some(1) => {
                let Some(op) = b.get(2..4) else {
                    return Ok(None);
                };
                match u16::from_be_bytes([op[0], op[1]]) {
                    0 | 1 => fixed(4, false),
                    2 => fixed(10, false),
                    op => return Err(RfbError::UnknownQemuAudioOperation(op)),
                }
            }
            Some(&sub) => return Err(RfbError::UnknownQemuMessage(sub)),
        },
        t => return Err(RfbError::UnknownClientMessage(t)),
    })
}

/// The browser's message stream after ClientInit.
#[derive(Debug)]
pub(crate) struct ClientFilter {
    view_only: bool,
    /// The start of a message that has not fully arrived.
    partial: Vec<u8>,
    /// Bytes of a ClientCutText body still to come.
    body_left: u64,
    /// Whether that body goes to the server (false: dropped, view-only).
    body_forwarded: bool,
    dropped: u64,
}

impl ClientFilter {
    pub(crate) fn new(view_only: bool) -> ClientFilter {
        ClientFilter {
            view_only,
            partial: Vec::new(),
            body_left: 0,
            body_forwarded: false,
            dropped: 0,
        }
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Frames `data` and appends what may reach the server to `out`.
    pub(crate) fn feed(&mut self, mut data: &[u8], out: &mut Vec<u8>) -> Result<(), RfbError> {
        loop {
            if self.body_left > 0 {
                let n = usize::try_from(self.body_left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                if self.body_forwarded {
                    out.extend_from_slice(&data[..n]);
                }
                self.body_left -= n as u64;
                data = &data[n..];
            }
            if data.is_empty() {
                return Ok(());
            }
            // Gather the next message's head in `partial`; straight from
            // `data` when nothing is pending (the usual case).
            let (message, used) = if self.partial.is_empty() {
                let Some(f) = framing(data)? else {
                    self.keep(data);
                    return Ok(());
                };
                if data.len() < f.head {
                    self.keep(data);
                    return Ok(());
                }
                (f, f.head)
            } else {
                let f = loop {
                    if let Some(f) = framing(&self.partial)? {
                        break f;
                    }
                    // One more byte until the length is known (a few bytes).
                    let Some((&b, rest)) = data.split_first() else {
                        return Ok(());
                    };
                    self.partial.push(b);
                    data = rest;
                };
                let n = f.head.saturating_sub(self.partial.len()).min(data.len());
                self.partial.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.partial.len() < f.head {
                    return Ok(());
                }
                (f, 0)
            };
            let dropped = message.input && self.view_only;
            if dropped {
                self.dropped += 1;
            } else if used > 0 {
                out.extend_from_slice(&data[..used]);
            } else {
                out.extend_from_slice(&self.partial);
            }
            self.body_left = message.body;
            self.body_forwarded = !dropped;
            self.partial.clear();
            data = &data[used..];
        }
    }

    fn keep(&mut self, data: &[u8]) {
        debug_assert!(data.len() < MAX_KEPT);
        self.partial.extend_from_slice(data);
    }
}
