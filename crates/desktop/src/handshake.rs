//! The RFB handshake on both sides of the bridge: ProtocolVersion, security,
//! ClientInit and ServerInit.
//!
//! Two small state machines, one per side, advance in turn until neither can:
//! the browser side waits for facts the server side learns (which security
//! type to offer, whether the password was accepted) and the other way round
//! (the browser's password response, its ClientInit). Bytes either side sends
//! ahead of its turn wait in their buffer (bounded by the caller).

use std::fmt;

use zeroize::Zeroizing;

use crate::vnc_auth::{self, CHALLENGE_LEN};
use crate::{Auth, Desktop, Io, RfbError};

/// What the bridge says to the browser first: it always speaks RFB 3.8 there.
pub(crate) const BROWSER_VERSION: &[u8; 12] = b"RFB 003.008\n";
/// Longest reason string the bridge accepts from the VNC server.
pub(crate) const REASON_LIMIT: u32 = 4096;
/// Longest desktop name the bridge accepts in ServerInit.
pub(crate) const NAME_LIMIT: u32 = 4096;
/// Reason given to the browser when an RFB 3.3/3.7 server refuses the
/// password (those versions send none, the browser's 3.8 expects one).
pub(crate) const NO_REASON: &str = "authentication failed";

const SECURITY_NONE: u8 = 1;
const SECURITY_VNC: u8 = 2;
const SERVER_INIT_FIXED: usize = 24;

/// The RFB version spoken with the VNC server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Version {
    V3_3,
    V3_7,
    V3_8,
}

impl Version {
    fn message(self) -> &'static [u8; 12] {
        match self {
            Version::V3_3 => b"RFB 003.003\n",
            Version::V3_7 => b"RFB 003.007\n",
            Version::V3_8 => b"RFB 003.008\n",
        }
    }
}

/// How the bridge got through the server's security.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Upstream {
    /// Security type None.
    Open,
    /// VNC Authentication answered with the stored password.
    Stored,
    /// VNC Authentication relayed to the browser.
    Typed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    Version,
    Security,
    /// The server refused the connection and sends its reason.
    RefusalReason,
    Challenge,
    SecurityResult,
    FailureReason {
        status: u32,
    },
    /// Security passed; waiting for the browser's ClientInit.
    Authenticated,
    ServerInit,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrowserState {
    Version,
    /// Waiting to learn which security type to offer.
    Offer,
    Choice,
    /// VNC Authentication relayed: waiting for the browser's response.
    Response,
    /// Waiting for the server's verdict.
    SecurityResult,
    ClientInit,
    Done,
}

pub(crate) struct Handshake {
    server: ServerState,
    browser: BrowserState,
    version: Version,
    typed: bool,
    password: Option<Zeroizing<String>>,
    upstream: Option<Upstream>,
    challenge_forwarded: bool,
    upstream_ok: bool,
    desktop: Option<Desktop>,
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("server", &self.server)
            .field("browser", &self.browser)
            .field("version", &self.version)
            .field("upstream", &self.upstream)
            .finish_non_exhaustive()
    }
}

/// Removes and returns the first `n` bytes of `buf`, if it holds that many.
fn take(buf: &mut Vec<u8>, n: usize) -> Option<Vec<u8>> {
    (buf.len() >= n).then(|| buf.drain(..n).collect())
}

fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads a length-prefixed reason string (`u32` length, bytes), if complete.
fn take_reason(buf: &mut Vec<u8>) -> Result<Option<String>, RfbError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = be_u32(buf);
    if len > REASON_LIMIT {
        return Err(RfbError::ReasonTooLong {
            len,
            limit: REASON_LIMIT,
        });
    }
    Ok(take(buf, 4 + len as usize).map(|b| String::from_utf8_lossy(&b[4..]).trim().to_string()))
}

fn reason_message(status: u32, reason: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + reason.len());
    out.extend_from_slice(&status.to_be_bytes());
    out.extend_from_slice(&(reason.len() as u32).to_be_bytes());
    out.extend_from_slice(reason.as_bytes());
    out
}

/// Parses the server's ProtocolVersion and picks the version to speak.
fn parse_version(b: &[u8]) -> Result<Version, RfbError> {
    let bad = || RfbError::BadServerVersion(b.escape_ascii().to_string());
    let digits = |d: &[u8]| -> Option<u32> {
        d.iter().try_fold(0u32, |acc, c| {
            c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
        })
    };
    if &b[..4] != b"RFB " || b[7] != b'.' || b[11] != b'\n' {
        return Err(bad());
    }
    let (Some(major), Some(minor)) = (digits(&b[4..7]), digits(&b[8..11])) else {
        return Err(bad());
    };
    match (major, minor) {
        (3, 3..=6) => Ok(Version::V3_3), // 3.5 and 3.6 were 3.3 in disguise
        (3, 7) => Ok(Version::V3_7),
        (3, _) if minor >= 8 => Ok(Version::V3_8), // 3.889 is Apple's 3.8
        (4.., _) => Ok(Version::V3_8),
        _ => Err(bad()),
    }
}

impl Handshake {
    pub(crate) fn new(auth: Auth, io: &mut Io) -> Handshake {
        io.to_browser.extend_from_slice(BROWSER_VERSION);
        let (typed, password) = match auth {
            Auth::Typed => (true, None),
            Auth::Stored(pw) => (false, Some(Zeroizing::new(pw))),
        };
        Handshake {
            server: ServerState::Version,
            browser: BrowserState::Version,
            version: Version::V3_8,
            typed,
            password,
            upstream: None,
            challenge_forwarded: false,
            upstream_ok: false,
            desktop: None,
        }
    }

    /// ServerInit has passed: what the server sends now goes to the browser as is.
    pub(crate) fn server_done(&self) -> bool {
        self.server == ServerState::Done
    }

    /// ClientInit has passed: what the browser sends now are client messages.
    pub(crate) fn browser_done(&self) -> bool {
        self.browser == BrowserState::Done
    }

    pub(crate) fn desktop(&self) -> Option<&Desktop> {
        self.desktop.as_ref()
    }

    /// One step on the server side; false if it has to wait.
    pub(crate) fn server_step(&mut self, io: &mut Io) -> Result<bool, RfbError> {
        let buf = &mut io.from_server;
        match self.server {
            ServerState::Version => {
                let Some(b) = take(buf, 12) else {
                    return Ok(false);
                };
                self.version = parse_version(&b)?;
                io.to_server.extend_from_slice(self.version.message());
                self.server = ServerState::Security;
            }
            ServerState::Security if self.version == Version::V3_3 => {
                // RFB 3.3: the server decides and sends a u32.
                let Some(b) = take(buf, 4) else {
                    return Ok(false);
                };
                match be_u32(&b) {
                    0 => self.server = ServerState::RefusalReason,
                    1 => self.use_none(),
                    2 => self.use_vnc_auth()?,
                    other => return Err(RfbError::UnsupportedSecurity(vec![other])),
                }
            }
            ServerState::Security => {
                // RFB 3.7 and 3.8: a list, the client chooses.
                let Some(&n) = buf.first() else {
                    return Ok(false);
                };
                let Some(b) = take(buf, 1 + usize::from(n)) else {
                    return Ok(false);
                };
                let types = &b[1..];
                if types.is_empty() {
                    self.server = ServerState::RefusalReason;
                } else if types.contains(&SECURITY_NONE) {
                    io.to_server.push(SECURITY_NONE);
                    self.use_none();
                } else if types.contains(&SECURITY_VNC) {
                    self.use_vnc_auth()?;
                    io.to_server.push(SECURITY_VNC);
                } else {
                    let offered = types.iter().map(|&t| u32::from(t)).collect();
                    return Err(RfbError::UnsupportedSecurity(offered));
                }
            }
            ServerState::RefusalReason => {
                let Some(reason) = take_reason(buf)? else {
                    return Ok(false);
                };
                return Err(RfbError::ServerRefused(reason));
            }
            ServerState::Challenge => {
                if self.upstream == Some(Upstream::Typed) && self.browser != BrowserState::Response
                {
                    // Relayed: the browser must have chosen VNC auth first.
                    return Ok(false);
                }
                let Some(b) = take(buf, CHALLENGE_LEN) else {
                    return Ok(false);
                };
                if self.upstream == Some(Upstream::Typed) {
                    io.to_browser.extend_from_slice(&b);
                    self.challenge_forwarded = true;
                } else {
                    let challenge: [u8; CHALLENGE_LEN] = b[..].try_into().expect("16 bytes");
                    let password = self.password.take().unwrap_or_default();
                    let response = vnc_auth::response(password.as_bytes(), &challenge);
                    io.to_server.extend_from_slice(&response);
                }
                self.server = ServerState::SecurityResult;
            }
            ServerState::SecurityResult => {
                if self.upstream == Some(Upstream::Typed)
                    && self.browser != BrowserState::SecurityResult
                {
                    // The verdict on a response the browser has not given yet.
                    return Ok(false);
                }
                let Some(b) = take(buf, 4) else {
                    return Ok(false);
                };
                match be_u32(&b) {
                    0 => {
                        self.upstream_ok = true;
                        self.server = ServerState::Authenticated;
                    }
                    status if self.version == Version::V3_8 => {
                        self.server = ServerState::FailureReason { status };
                    }
                    status => return Err(self.refused(io, status, NO_REASON)),
                }
            }
            ServerState::FailureReason { status } => {
                let Some(reason) = take_reason(buf)? else {
                    return Ok(false);
                };
                let reason = if reason.is_empty() {
                    NO_REASON.to_string()
                } else {
                    reason
                };
                return Err(self.refused(io, status, &reason));
            }
            // ClientInit is the browser side's step.
            ServerState::Authenticated | ServerState::Done => return Ok(false),
            ServerState::ServerInit => {
                if buf.len() < SERVER_INIT_FIXED {
                    return Ok(false);
                }
                let name_len = be_u32(&buf[20..24]);
                if name_len > NAME_LIMIT {
                    return Err(RfbError::NameTooLong {
                        len: name_len,
                        limit: NAME_LIMIT,
                    });
                }
                let Some(b) = take(buf, SERVER_INIT_FIXED + name_len as usize) else {
                    return Ok(false);
                };
                self.desktop = Some(Desktop {
                    width: u16::from_be_bytes([b[0], b[1]]),
                    height: u16::from_be_bytes([b[2], b[3]]),
                    name: String::from_utf8_lossy(&b[SERVER_INIT_FIXED..]).into_owned(),
                });
                io.to_browser.extend_from_slice(&b);
                self.server = ServerState::Done;
            }
        }
        Ok(true)
    }

    /// One step on the browser side; false if it has to wait.
    pub(crate) fn browser_step(&mut self, io: &mut Io) -> Result<bool, RfbError> {
        let buf = &mut io.from_browser;
        match self.browser {
            BrowserState::Version => {
                let Some(b) = take(buf, 12) else {
                    return Ok(false);
                };
                if b[..] != BROWSER_VERSION[..] {
                    return Err(RfbError::BadBrowserVersion(b.escape_ascii().to_string()));
                }
                self.browser = BrowserState::Offer;
            }
            BrowserState::Offer => {
                let Some(offer) = self.offer() else {
                    return Ok(false);
                };
                io.to_browser.extend_from_slice(&[1, offer]);
                self.browser = BrowserState::Choice;
            }
            BrowserState::Choice => {
                let Some(b) = take(buf, 1) else {
                    return Ok(false);
                };
                let offered = self.offer().expect("offered before");
                if b[0] != offered {
                    return Err(RfbError::BrowserSecurityType {
                        chosen: b[0],
                        offered,
                    });
                }
                self.browser = if offered == SECURITY_VNC {
                    BrowserState::Response
                } else {
                    BrowserState::SecurityResult
                };
            }
            BrowserState::Response => {
                if !self.challenge_forwarded {
                    return Ok(false);
                }
                let Some(b) = take(buf, CHALLENGE_LEN) else {
                    return Ok(false);
                };
                io.to_server.extend_from_slice(&b);
                self.browser = BrowserState::SecurityResult;
            }
            BrowserState::SecurityResult => {
                if !self.upstream_ok {
                    return Ok(false);
                }
                io.to_browser.extend_from_slice(&0u32.to_be_bytes());
                self.browser = BrowserState::ClientInit;
            }
            BrowserState::ClientInit => {
                if take(buf, 1).is_none() {
                    return Ok(false);
                }
                debug_assert_eq!(self.server, ServerState::Authenticated);
                // Always shared: a watcher or another viewer is never kicked.
                io.to_server.push(1);
                self.server = ServerState::ServerInit;
                self.browser = BrowserState::Done;
            }
            BrowserState::Done => return Ok(false),
        }
        Ok(true)
    }

    /// The security type offered to the browser, once known.
    fn offer(&self) -> Option<u8> {
        Some(match self.upstream? {
            Upstream::Open | Upstream::Stored => SECURITY_NONE,
            Upstream::Typed => SECURITY_VNC,
        })
    }

    fn use_none(&mut self) {
        self.upstream = Some(Upstream::Open);
        // No password needed: forget it now.
        self.password = None;
        if self.version == Version::V3_8 {
            self.server = ServerState::SecurityResult;
        } else {
            // Before 3.8 security type None has no SecurityResult.
            self.upstream_ok = true;
            self.server = ServerState::Authenticated;
        }
    }

    fn use_vnc_auth(&mut self) -> Result<(), RfbError> {
        self.upstream = Some(if self.typed {
            Upstream::Typed
        } else if self.password.as_ref().is_some_and(|pw| !pw.is_empty()) {
            Upstream::Stored
        } else {
            return Err(RfbError::NoStoredPassword);
        });
        self.server = ServerState::Challenge;
        Ok(())
    }

    /// The server's SecurityResult said no. A relayed password's verdict also
    /// goes to the browser (in 3.8 form, with a reason) so noVNC can say so.
    fn refused(&mut self, io: &mut Io, status: u32, reason: &str) -> RfbError {
        match self.upstream {
            Some(Upstream::Typed) => {
                io.to_browser
                    .extend_from_slice(&reason_message(status, reason));
                RfbError::PasswordRefused(reason.to_string())
            }
            Some(Upstream::Stored) => RfbError::PasswordRefused(reason.to_string()),
            Some(Upstream::Open) | None => RfbError::ServerRefused(reason.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(s: &[u8; 12]) -> Result<Version, RfbError> {
        parse_version(s)
    }

    #[test]
    fn known_versions_are_spoken_as_is() {
        assert_eq!(version(b"RFB 003.003\n").unwrap(), Version::V3_3);
        assert_eq!(version(b"RFB 003.007\n").unwrap(), Version::V3_7);
        assert_eq!(version(b"RFB 003.008\n").unwrap(), Version::V3_8);
    }

    #[test]
    fn apple_and_newer_versions_are_answered_with_3_8() {
        assert_eq!(version(b"RFB 003.889\n").unwrap(), Version::V3_8);
        assert_eq!(version(b"RFB 004.001\n").unwrap(), Version::V3_8);
        assert_eq!(version(b"RFB 005.000\n").unwrap(), Version::V3_8);
        assert_eq!(version(b"RFB 003.010\n").unwrap(), Version::V3_8);
    }

    #[test]
    fn versions_between_3_3_and_3_7_are_3_3() {
        assert_eq!(version(b"RFB 003.005\n").unwrap(), Version::V3_3);
        assert_eq!(version(b"RFB 003.006\n").unwrap(), Version::V3_3);
    }

    #[test]
    fn malformed_or_ancient_versions_are_refused() {
        for bad in [
            b"RFB 003.002\n",
            b"RFB 002.009\n",
            b"RFB 000.000\n",
            b"SSH-2.0-Open",
            b"RFB 003.008 ",
            b"RFB 0x3.008\n",
            b"RFB 003,008\n",
            b"HTTP/1.1 200",
        ] {
            let err = version(bad).unwrap_err();
            assert!(err.to_string().starts_with("bad RFB version"), "{err}");
        }
    }

    #[test]
    fn reason_strings_are_bounded() {
        let mut buf = (REASON_LIMIT + 1).to_be_bytes().to_vec();
        assert_eq!(
            take_reason(&mut buf).unwrap_err(),
            RfbError::ReasonTooLong {
                len: REASON_LIMIT + 1,
                limit: REASON_LIMIT
            }
        );
        let mut buf = 3u32.to_be_bytes().to_vec();
        buf.extend_from_slice(b"no");
        assert_eq!(take_reason(&mut buf).unwrap(), None);
        buf.push(b'!');
        assert_eq!(take_reason(&mut buf).unwrap().as_deref(), Some("no!"));
        assert!(buf.is_empty());
    }
}
