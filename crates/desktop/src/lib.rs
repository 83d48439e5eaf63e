//! Sans-IO RFB (VNC, RFC 6143) bridge between a browser running noVNC and a
//! VNC server.
//!
//! The server crate carries the bytes: those read from the VNC server go into
//! [`Bridge::from_server`], the payloads of the browser's binary WebSocket
//! messages into [`Bridge::from_browser`], and whatever
//! [`Bridge::take_to_server`] and [`Bridge::take_to_browser`] return is written
//! out. This crate does no I/O, owns no clock and spawns nothing.
//!
//! What the bridge does in the middle:
//!
//! - It always speaks RFB 3.8 to the browser and the highest version both sides
//!   know (3.3, 3.7 or 3.8) to the VNC server.
//! - It chooses the upstream security type (None, else VNC Authentication) and
//!   either answers the password challenge itself with a stored password (the
//!   browser is offered security type None) or relays the challenge to the
//!   browser so the user types the password ([`Auth`]).
//! - It always asks the VNC server for a shared session, so a watcher or
//!   another viewer is never kicked.
//! - After the handshake the server's stream passes through untouched; the
//!   browser's stream is framed message by message, and in view-only mode every
//!   input (keys, pointer, clipboard, desktop resize, power actions) is dropped.
//!
//! Every buffer is bounded and no input makes it panic. After an error the
//! bridge is finished: the caller flushes what is queued for the browser (it
//! may carry the server's reason) and closes both connections.
//!
//! [`recording`] holds the simple framed format the server records the
//! server→browser stream in.

mod error;
mod filter;
mod handshake;
pub mod rdp;
pub mod recording;
mod vnc_auth;

#[cfg(test)]
mod tests;

use std::fmt;

pub use error::RfbError;
pub use recording::{Frame, Recorder, RecordingError};

use filter::ClientFilter;
use handshake::Handshake;

/// How the bridge gets through the VNC server's password check.
#[derive(Clone, PartialEq, Eq)]
pub enum Auth {
    /// The user types the password in noVNC: the security phase is relayed (the
    /// server's VNC-auth challenge goes to the browser, its response back).
    Typed,
    /// A stored password: the bridge answers the VNC-auth challenge itself and
    /// offers the browser security type None, so the user never sees it.
    ///
    /// An empty string counts as no password stored: if the VNC server then
    /// asks for one, the bridge fails with [`RfbError::NoStoredPassword`].
    Stored(String),
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Auth::Typed => f.write_str("Typed"),
            Auth::Stored(_) => f.write_str("Stored(<redacted>)"),
        }
    }
}

/// What one bridged connection does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub auth: Auth,
    /// Drop every input the browser sends (keys, pointer, clipboard, desktop
    /// resize, xvp power actions); the picture still flows.
    pub view_only: bool,
}

/// The remote desktop as the VNC server described it in its ServerInit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desktop {
    pub width: u16,
    pub height: u16,
    pub name: String,
}

/// Bytes both sides have sent that the bridge has not handled yet, and what it
/// has to send.
#[derive(Default)]
pub(crate) struct Io {
    pub from_server: Vec<u8>,
    pub from_browser: Vec<u8>,
    pub to_server: Vec<u8>,
    pub to_browser: Vec<u8>,
}

/// Most bytes one side may send during the handshake that the bridge cannot
/// handle yet (an incomplete item, or data sent ahead of its turn).
pub(crate) const HANDSHAKE_BUFFER_LIMIT: usize = 8 * 1024;

/// One browser ↔ VNC server connection. See the crate documentation.
///
/// ```
/// use drawbridge_desktop::{Auth, Bridge, Config};
///
/// let mut bridge = Bridge::new(Config { auth: Auth::Stored("pw".into()), view_only: true });
/// // The bridge greets the browser first…
/// assert_eq!(bridge.take_to_browser(), b"RFB 003.008\n");
/// // …and answers the VNC server's greeting with the version it will speak.
/// bridge.from_server(b"RFB 003.008\n").unwrap();
/// assert_eq!(bridge.take_to_server(), b"RFB 003.008\n");
/// // Each time bytes arrive: feed them in, then write out what it says.
/// bridge.from_browser(b"RFB 003.008\n").unwrap();
/// bridge.from_server(&[1, 2]).unwrap(); // the server wants VNC Authentication
/// assert_eq!(bridge.take_to_server(), [2]); // the bridge takes it on itself
/// assert_eq!(bridge.take_to_browser(), [1, 1]); // the browser is offered None
/// ```
pub struct Bridge {
    handshake: Handshake,
    filter: ClientFilter,
    io: Io,
    failed: bool,
}

impl fmt::Debug for Bridge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bridge")
            .field("handshake", &self.handshake)
            .field("desktop", &self.desktop())
            .field("dropped_inputs", &self.dropped_inputs())
            .field("failed", &self.failed)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    pub fn new(config: Config) -> Bridge {
        let mut io = Io::default();
        let handshake = Handshake::new(config.auth, &mut io);
        Bridge {
            handshake,
            filter: ClientFilter::new(config.view_only),
            io,
            failed: false,
        }
    }

    /// Whether bytes from the VNC server now go to the browser untouched: the
    /// handshake is done and nothing is waiting for the browser. The caller
    /// may then send what it read as it is, without [`Bridge::from_server`]
    /// and its copy.
    pub fn passes_server_bytes(&self) -> bool {
        !self.failed && self.handshake.server_done() && self.io.to_browser.is_empty()
    }

    /// Bytes read from the VNC server.
    pub fn from_server(&mut self, data: &[u8]) -> Result<(), RfbError> {
        if self.failed {
            return Err(RfbError::Finished);
        }
        if self.handshake.server_done() {
            // The common case once connected: the picture passes untouched.
            self.io.to_browser.extend_from_slice(data);
            return Ok(());
        }
        self.io.from_server.extend_from_slice(data);
        let result = self.advance(true);
        self.fail_on_error(result)
    }

    /// Bytes read from the browser (the concatenated payloads of its binary
    /// WebSocket messages).
    pub fn from_browser(&mut self, data: &[u8]) -> Result<(), RfbError> {
        if self.failed {
            return Err(RfbError::Finished);
        }
        if self.handshake.browser_done() {
            let result = self.filter.feed(data, &mut self.io.to_server);
            return self.fail_on_error(result);
        }
        self.io.from_browser.extend_from_slice(data);
        let result = self.advance(false);
        self.fail_on_error(result)
    }

    /// Drains what must be written to the VNC server now.
    pub fn take_to_server(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.io.to_server)
    }

    /// Drains what must be sent to the browser now (this is also exactly what
    /// gets recorded).
    pub fn take_to_browser(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.io.to_browser)
    }

    /// Some once ServerInit has passed.
    pub fn desktop(&self) -> Option<&Desktop> {
        self.handshake.desktop()
    }

    /// Input events dropped because of view-only.
    pub fn dropped_inputs(&self) -> u64 {
        self.filter.dropped()
    }

    /// Handles buffered bytes as far as possible after bytes arrived from the
    /// server (`from_server`) or the browser.
    ///
    /// The side the bytes came from takes one step at a time and the other
    /// side goes as far as it can in between, which is what happens when the
    /// bytes arrive one by one: so however the streams are cut, the same
    /// things happen in the same order, errors included.
    fn advance(&mut self, from_server: bool) -> Result<(), RfbError> {
        loop {
            let stepped = if from_server {
                self.server_step()?
            } else {
                self.browser_step()?
            };
            if !stepped {
                break;
            }
            if from_server {
                while self.browser_step()? {}
            } else {
                while self.server_step()? {}
            }
        }
        if self.io.from_server.len() > HANDSHAKE_BUFFER_LIMIT {
            return Err(RfbError::ServerHandshakeTooLong {
                limit: HANDSHAKE_BUFFER_LIMIT,
            });
        }
        if self.io.from_browser.len() > HANDSHAKE_BUFFER_LIMIT {
            return Err(RfbError::BrowserHandshakeTooLong {
                limit: HANDSHAKE_BUFFER_LIMIT,
            });
        }
        Ok(())
    }

    /// One step with the server's bytes: a handshake item, or after the
    /// handshake everything that is there, passed through.
    fn server_step(&mut self) -> Result<bool, RfbError> {
        if !self.handshake.server_done() {
            return self.handshake.server_step(&mut self.io);
        }
        if self.io.from_server.is_empty() {
            return Ok(false);
        }
        let rest = std::mem::take(&mut self.io.from_server);
        self.io.to_browser.extend_from_slice(&rest);
        Ok(true)
    }

    /// One step with the browser's bytes: a handshake item, or after the
    /// handshake everything that is there, through the filter.
    fn browser_step(&mut self) -> Result<bool, RfbError> {
        if !self.handshake.browser_done() {
            return self.handshake.browser_step(&mut self.io);
        }
        if self.io.from_browser.is_empty() {
            return Ok(false);
        }
        let rest = std::mem::take(&mut self.io.from_browser);
        self.filter.feed(&rest, &mut self.io.to_server)?;
        Ok(true)
    }

    fn fail_on_error(&mut self, result: Result<(), RfbError>) -> Result<(), RfbError> {
        if result.is_err() {
            self.failed = true;
            self.io.from_server = Vec::new();
            self.io.from_browser = Vec::new();
        }
        result
    }
}
