//! A server-sent-events parser (the WHATWG `text/event-stream` format), sans-IO:
//! bytes go in as they arrive, whole events come out. Lines end with LF, CRLF
//! or CR; `:` lines are comments (keep-alives); `event`, `data` and `id` are
//! kept, other fields ignored. Everything is bounded: a line longer than
//! [`MAX_LINE`] or an event whose data exceeds [`MAX_EVENT_DATA`] is an error,
//! never an allocation the server chooses.

/// Longest line accepted (a KPI event is a few hundred bytes).
pub const MAX_LINE: usize = 64 * 1024;
/// Most data one event may carry (all its `data` lines together).
pub const MAX_EVENT_DATA: usize = 256 * 1024;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event` field, `message` when the event named none.
    pub event: String,
    /// The `data` lines joined with `\n`.
    pub data: String,
    /// The last `id` field seen, if any.
    pub id: Option<String>,
}

/// Why a stream cannot be read further.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SseError {
    #[error("the server sent an event-stream line longer than {MAX_LINE} bytes")]
    LineTooLong,
    #[error("the server sent an event with more than {MAX_EVENT_DATA} bytes of data")]
    EventTooLarge,
}

/// The parser's state between two chunks.
#[derive(Debug, Default)]
pub struct SseParser {
    line: Vec<u8>,
    event: Option<String>,
    data: String,
    has_data: bool,
    id: Option<String>,
    /// The previous chunk ended on CR: a LF starting this one belongs to it.
    after_cr: bool,
    /// Past the start of the stream (where a byte-order mark is dropped).
    started: bool,
}

impl SseParser {
    pub fn new() -> SseParser {
        SseParser::default()
    }

    /// Feeds the next bytes of the stream; returns the events they completed.
    /// After an error the parser must not be used again.
    pub fn push(&mut self, mut bytes: &[u8]) -> Result<Vec<SseEvent>, SseError> {
        let mut out = Vec::new();
        if !self.started && !bytes.is_empty() {
            // The BOM may arrive split over chunks only in theory; a stream's
            // first chunk holds at least its first three bytes in practice,
            // and a partial BOM would only spoil the first field name.
            if let Some(rest) = bytes.strip_prefix(b"\xEF\xBB\xBF") {
                bytes = rest;
            }
            self.started = true;
        }
        for &b in bytes {
            if self.after_cr {
                self.after_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\n' | b'\r' => {
                    self.after_cr = b == b'\r';
                    let line = std::mem::take(&mut self.line);
                    if let Some(ev) = self.line_done(&line)? {
                        out.push(ev);
                    }
                }
                _ => {
                    if self.line.len() >= MAX_LINE {
                        return Err(SseError::LineTooLong);
                    }
                    self.line.push(b);
                }
            }
        }
        Ok(out)
    }

    fn line_done(&mut self, line: &[u8]) -> Result<Option<SseEvent>, SseError> {
        if line.is_empty() {
            return Ok(self.dispatch());
        }
        if line[0] == b':' {
            return Ok(None);
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(i) => {
                let v = &line[i + 1..];
                (&line[..i], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"event" => self.event = Some(value.into_owned()),
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT_DATA {
                    return Err(SseError::EventTooLarge);
                }
                if self.has_data {
                    self.data.push('\n');
                }
                self.data.push_str(&value);
                self.has_data = true;
            }
            // An id with NUL is ignored, as the standard says.
            b"id" if !value.contains('\0') => self.id = Some(value.into_owned()),
            _ => {}
        }
        Ok(None)
    }

    /// An empty line: the event so far, if it has data (else nothing, and the
    /// event name is forgotten, as the standard says).
    fn dispatch(&mut self) -> Option<SseEvent> {
        let event = self.event.take();
        if !self.has_data {
            return None;
        }
        self.has_data = false;
        Some(SseEvent {
            event: event
                .filter(|e| !e.is_empty())
                .unwrap_or_else(|| "message".into()),
            data: std::mem::take(&mut self.data),
            id: self.id.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut p = SseParser::new();
        let mut out = Vec::new();
        for c in chunks {
            out.extend(p.push(c).unwrap());
        }
        out
    }

    fn ev(event: &str, data: &str) -> SseEvent {
        SseEvent {
            event: event.into(),
            data: data.into(),
            id: None,
        }
    }

    #[test]
    fn events_are_dispatched_on_an_empty_line_whatever_the_line_ends() {
        let want = vec![ev("kpi", "{\"a\":1}"), ev("message", "x\ny")];
        for text in [
            "event: kpi\ndata: {\"a\":1}\n\ndata: x\ndata: y\n\n",
            "event: kpi\r\ndata: {\"a\":1}\r\n\r\ndata: x\r\ndata: y\r\n\r\n",
            "event: kpi\rdata: {\"a\":1}\r\rdata: x\rdata: y\r\r",
        ] {
            assert_eq!(all(&[text.as_bytes()]), want, "{text:?}");
            // Byte by byte: chunk borders anywhere, CRLF split included.
            let bytes: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
            assert_eq!(all(&bytes), want, "{text:?} byte by byte");
        }
    }

    #[test]
    fn comments_unknown_fields_and_data_less_events_give_nothing() {
        let got = all(&[b"\xEF\xBB\xBF: keep-alive\n\nevent: kpi\n\nretry: 5\nfoo\n\n"]);
        assert!(got.is_empty(), "{got:?}");
        // The name of a data-less event does not stick to the next one.
        assert_eq!(
            all(&[b"event: kpi\n\ndata: 1\n\n"]),
            vec![ev("message", "1")]
        );
        // `data` without a colon is an empty data line; no space after the colon is fine.
        assert_eq!(all(&[b"data\n\n"]), vec![ev("message", "")]);
        assert_eq!(all(&[b"event:end\ndata:gone\n\n"]), vec![ev("end", "gone")]);
        // An unfinished event is never dispatched.
        assert!(all(&[b"data: half"]).is_empty());
        let got = all(&[b"id: 7\ndata: a\n\n"]);
        assert_eq!(got[0].id.as_deref(), Some("7"));
    }

    #[test]
    fn an_endless_line_or_event_is_refused_instead_of_growing() {
        let mut p = SseParser::new();
        let chunk = vec![b'a'; 4096];
        let mut err = None;
        for _ in 0..(MAX_LINE / 4096 + 2) {
            if let Err(e) = p.push(&chunk) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(SseError::LineTooLong));
        assert!(p.line.len() <= MAX_LINE);

        let mut p = SseParser::new();
        let line = format!("data: {}\n", "b".repeat(60 * 1024));
        let mut err = None;
        for _ in 0..10 {
            if let Err(e) = p.push(line.as_bytes()) {
                err = Some(e);
                break;
            }
        }
        assert_eq!(err, Some(SseError::EventTooLarge));
        assert!(p.data.len() <= MAX_EVENT_DATA);
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let got = all(&[b"data: \xFF\xFEok\n\n"]);
        assert_eq!(got.len(), 1);
        assert!(got[0].data.ends_with("ok"));
    }
}
