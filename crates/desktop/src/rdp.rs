//! Sans-IO RDP bridge for the IronRDP web client: the RDCleanPath protocol
//! (the browser cannot open TCP or do TLS itself, so it asks a gateway to)
//! and the client→server framing that makes view-only and autologon work.
//!
//! One connection goes through these states:
//!
//! 1. **Request.** The browser's first WebSocket bytes are a DER
//!    RDCleanPath request (at most [`MAX_REQUEST`] bytes): its `proxy_auth`
//!    (the caller checks it, see [`RdpBridge::request`]) and the X.224
//!    Connection Request the client wants sent to the RDP server.
//! 2. **Confirm.** After the caller connected to the RDP server
//!    ([`RdpBridge::connected`]) the Connection Request goes out unchanged, and
//!    the server's X.224 Connection Confirm (at most [`MAX_CONFIRM`] bytes)
//!    comes back. A refusal of the negotiation goes to the browser as a
//!    negotiation error PDU, with the server's confirm in it.
//! 3. **TLS.** The caller runs TLS as a client over the same connection
//!    ([`RdpBridge::wants_tls`]) and hands in the certificate chain the server
//!    presented ([`RdpBridge::tls_established`]); the browser gets the
//!    RDCleanPath response (the confirm and the chain).
//! 4. **Relay.** From then on the WebSocket carries plain RDP (inside the
//!    browser's HTTPS) both ways. What the server sends passes untouched.
//!    What the browser sends is framed PDU by PDU (TPKT, fast-path, and the
//!    DER messages of CredSSP first when the server chose NLA): the Client
//!    Info PDU gets `INFO_AUTOLOGON` when it carries a password (so the
//!    server does not ask again), and in view-only mode every input (fast-path
//!    PDUs, slow-path input PDUs, virtual channel data) is dropped.
//!
//! With stored credentials ([`RdpBridge::inject`], TLS security only: see
//! [`inject`]) the Connection Request offers TLS alone and the Client Info
//! PDU is rebuilt with them; the browser only ever has placeholders, and a
//! server that requires NLA ends the connection with [`RdpError::NlaRequired`].
//!
//! The recording of a desktop is what the server sent after CredSSP (for NLA
//! the first thing recorded is the answer to the client's MCS Connect
//! Initial), preceded by [`RdpBridge::replay_response`]: the response PDU with
//! the selected protocol rewritten to plain TLS, so a replaying client (which
//! gets the recorded response from a fake gateway) skips CredSSP.
//!
//! Every buffer is bounded and no input makes the bridge panic.

/// The RDCleanPath PDUs (for tests and tools that play the client).
pub use ironrdp_rdcleanpath as rdcleanpath;
use ironrdp_rdcleanpath::{DetectionResult, RDCleanPathMessage, RDCleanPathPdu};

pub mod inject;
pub use inject::RdpCredentials;

/// Largest RDCleanPath request the browser may send.
pub const MAX_REQUEST: usize = 16 * 1024;
/// Largest X.224 Connection Request or Confirm.
pub const MAX_CONFIRM: usize = 512;
/// Largest CredSSP message (a DER TSRequest) passed during NLA.
pub const MAX_CREDSSP: usize = 64 * 1024;
/// Largest client→server PDU (the TPKT length field's limit).
pub const MAX_PDU: usize = 0xFFFF;

/// X.224 requested/selected protocol bits (MS-RDPBCGR 2.2.1.1.1).
pub const PROTOCOL_RDP: u32 = 0;
pub const PROTOCOL_SSL: u32 = 1;
pub const PROTOCOL_HYBRID: u32 = 2;
pub const PROTOCOL_HYBRID_EX: u32 = 8;

/// TS_INFO_PACKET flag: log on with the credentials in the packet.
const INFO_AUTOLOGON: u32 = 0x0000_0008;
/// Basic security header flag: this is a Client Info PDU.
const SEC_INFO_PKT: u16 = 0x0040;
/// Basic security header flag: the payload is encrypted (standard RDP security).
const SEC_ENCRYPT: u16 = 0x0008;
/// MCS DomainMCSPDU choice Send Data Request (25), as its first byte.
const MCS_SEND_DATA_REQUEST: u8 = 25 << 2;
/// Share Control Header pduType: a Data PDU.
const PDUTYPE_DATAPDU: u16 = 0x7;
/// Share Data Header pduType2: an input event PDU.
const PDUTYPE2_INPUT: u8 = 0x1C;

/// RDP_NEG_FAILURE code: the server requires NLA.
const HYBRID_REQUIRED_BY_SERVER: u32 = 5;

/// Who [`RdpError::OutOfTurn`] names for the RDP server.
const SERVER: &str = "RDP server";

/// Why an RDP connection could not be bridged or ended. The messages are
/// shown to users; [`RdpError::http_status`] is what the browser's client gets
/// in the RDCleanPath error PDU before the connection is up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RdpError {
    #[error("the browser did not send an RDCleanPath request")]
    NotRdCleanPath,
    #[error("the browser's RDCleanPath request is longer than {limit} bytes")]
    RequestTooLong { limit: usize },
    #[error("the browser's RDCleanPath request does not decode: {0}")]
    BadRequest(String),
    #[error("the browser asked for {0}, which this gateway does not do")]
    Unsupported(&'static str),
    #[error("the browser's X.224 connection request is malformed")]
    BadConnectionRequest,
    #[error("the RDP server's X.224 connection confirm is malformed")]
    BadConfirm,
    #[error("the RDP server's X.224 connection confirm is longer than {limit} bytes")]
    ConfirmTooLong { limit: usize },
    #[error("the RDP server refused the security protocols the client offered ({})", failure_name(*.0))]
    NegotiationFailed(u32),
    #[error(
        "the RDP server chose standard RDP security (no TLS), which the browser's client does not support; \
         set the server's security layer to TLS or negotiate"
    )]
    StandardSecurity,
    #[error("the RDP server chose security protocol {0:#x}, which this gateway does not support")]
    UnsupportedProtocol(u32),
    #[error("the browser sent a malformed RDP PDU")]
    BadClientPdu,
    #[error("the browser sent an RDP PDU of {len} bytes (limit {limit})")]
    ClientPduTooLong { len: usize, limit: usize },
    #[error("the {0} sent data out of turn")]
    OutOfTurn(&'static str),
    #[error("the bridge already stopped after an error")]
    Finished,
    #[error(
        "this RDP server requires NLA; stored credentials cannot be injected, type them instead"
    )]
    NlaRequired,
    #[error(
        "the browser's client offers no TLS security, so the stored credentials cannot be injected"
    )]
    NoTlsOffered,
    #[error("the stored credentials do not fit an RDP logon (at most 255 characters each)")]
    BadCredentials,
}

impl RdpError {
    /// The HTTP status the RDCleanPath error PDU carries for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            RdpError::NotRdCleanPath
            | RdpError::RequestTooLong { .. }
            | RdpError::BadRequest(_)
            | RdpError::Unsupported(_)
            | RdpError::BadConnectionRequest
            | RdpError::BadClientPdu
            | RdpError::ClientPduTooLong { .. }
            | RdpError::Finished
            | RdpError::NoTlsOffered => 400,
            RdpError::BadCredentials => 500,
            RdpError::OutOfTurn(who) if *who != SERVER => 400,
            RdpError::OutOfTurn(_) => 502,
            RdpError::BadConfirm
            | RdpError::ConfirmTooLong { .. }
            | RdpError::NegotiationFailed(_)
            | RdpError::NlaRequired
            | RdpError::StandardSecurity
            | RdpError::UnsupportedProtocol(_) => 502,
        }
    }
}

fn failure_name(code: u32) -> &'static str {
    match code {
        1 => "SSL_REQUIRED_BY_SERVER",
        2 => "SSL_NOT_ALLOWED_BY_SERVER",
        3 => "SSL_CERT_NOT_ON_SERVER",
        4 => "INCONSISTENT_FLAGS",
        5 => "HYBRID_REQUIRED_BY_SERVER: the server requires NLA",
        6 => "SSL_WITH_USER_AUTH_REQUIRED_BY_SERVER",
        _ => "unknown failure code",
    }
}

/// An RDCleanPath error PDU with `GENERAL_ERROR_CODE` and an HTTP status,
/// which the IronRDP web client shows as `rdcleanpathDetails().httpStatusCode`.
pub fn http_error_pdu(status: u16) -> Vec<u8> {
    RDCleanPathPdu::new_http_error(status)
        .to_der()
        .unwrap_or_default()
}

/// An RDCleanPath error PDU for a TLS alert the RDP server sent.
pub fn tls_error_pdu(alert: u8) -> Vec<u8> {
    RDCleanPathPdu::new_tls_error(alert)
        .to_der()
        .unwrap_or_default()
}

/// What one bridged connection does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RdpConfig {
    /// Drop every input the browser sends; the picture still flows.
    pub view_only: bool,
}

/// The browser's RDCleanPath request, as far as the caller needs it.
#[derive(Clone, PartialEq, Eq)]
pub struct RdpRequest {
    /// What the browser's page put in `withAuthToken`: the caller compares it
    /// (in constant time) with what it gave the page.
    pub proxy_auth: String,
    /// The free-text destination the page gave; the target is the origin's,
    /// so this is only logged.
    pub destination: String,
    /// The protocols the client offers in its X.224 request.
    pub requested_protocols: u32,
}

impl std::fmt::Debug for RdpRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdpRequest")
            .field("proxy_auth", &"<redacted>")
            .field("destination", &self.destination)
            .field("requested_protocols", &self.requested_protocols)
            .finish()
    }
}

/// Where a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RdpState {
    /// Waiting for the browser's RDCleanPath request.
    AwaitRequest,
    /// The request is in ([`RdpBridge::request`]); the caller checks it and
    /// connects to the RDP server, then calls [`RdpBridge::connected`].
    Requested,
    /// Waiting for the RDP server's X.224 Connection Confirm.
    AwaitConfirm,
    /// The caller runs TLS with the RDP server now.
    Tls,
    /// Passing RDP both ways.
    Relay,
    /// Ended after an error.
    Failed,
}

/// How the browser's bytes are framed in the relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum C2s {
    /// CredSSP's DER TSRequests until the first TPKT (NLA only).
    Credssp,
    /// TPKT and fast-path PDUs.
    Rdp,
}

/// One browser ↔ RDP server connection. See the module documentation.
pub struct RdpBridge {
    config: RdpConfig,
    state: RdpState,
    request: Option<RdpRequest>,
    connection_request: Vec<u8>,
    confirm: Vec<u8>,
    selected: u32,
    replay_response: Vec<u8>,
    c2s: C2s,
    /// The MCS channel the Client Info PDU came on (the I/O channel).
    io_channel: Option<u16>,
    info_seen: bool,
    /// Whether what the server sends now is recorded (after CredSSP).
    recording: bool,
    from_browser: Vec<u8>,
    from_server: Vec<u8>,
    to_browser: Vec<u8>,
    /// The first bytes of `to_browser` that are not to be recorded.
    unrecorded: usize,
    to_server: Vec<u8>,
    dropped: u64,
    autologon_set: bool,
    /// Stored credentials for the Client Info PDU (taken when used).
    credentials: Option<RdpCredentials>,
    /// Whether stored credentials are injected in this connection.
    injecting: bool,
}

impl std::fmt::Debug for RdpBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RdpBridge")
            .field("config", &self.config)
            .field("state", &self.state)
            .field("selected", &self.selected)
            .field("dropped_inputs", &self.dropped)
            .field("injecting", &self.injecting)
            .finish_non_exhaustive()
    }
}

/// What the browser is sent now, and which part of it goes in the recording.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ToBrowser {
    pub bytes: Vec<u8>,
    /// `bytes[record_from..]` is recorded; what comes before is the
    /// RDCleanPath response or CredSSP.
    pub record_from: usize,
}

impl ToBrowser {
    pub fn recorded(&self) -> &[u8] {
        &self.bytes[self.record_from.min(self.bytes.len())..]
    }
}

impl RdpBridge {
    pub fn new(config: RdpConfig) -> RdpBridge {
        RdpBridge {
            config,
            state: RdpState::AwaitRequest,
            request: None,
            connection_request: Vec::new(),
            confirm: Vec::new(),
            selected: 0,
            replay_response: Vec::new(),
            c2s: C2s::Rdp,
            io_channel: None,
            info_seen: false,
            recording: false,
            from_browser: Vec::new(),
            from_server: Vec::new(),
            to_browser: Vec::new(),
            unrecorded: 0,
            to_server: Vec::new(),
            dropped: 0,
            autologon_set: false,
            credentials: None,
            injecting: false,
        }
    }

    /// Logs on with stored credentials instead of what the browser typed:
    /// before [`RdpBridge::connected`]. The connection then uses TLS security
    /// (never NLA) and the browser's Client Info PDU is rebuilt with them.
    pub fn inject(&mut self, credentials: RdpCredentials) -> Result<(), RdpError> {
        if !matches!(self.state, RdpState::AwaitRequest | RdpState::Requested) {
            return Err(self.fail(RdpError::OutOfTurn("gateway")));
        }
        if !credentials.fits() {
            return Err(self.fail(RdpError::BadCredentials));
        }
        self.credentials = Some(credentials);
        self.injecting = true;
        Ok(())
    }

    /// Whether stored credentials are injected in this connection.
    pub fn injecting(&self) -> bool {
        self.injecting
    }

    pub fn state(&self) -> &RdpState {
        &self.state
    }

    /// The browser's request, once it is in.
    pub fn request(&self) -> Option<&RdpRequest> {
        self.request.as_ref()
    }

    /// Whether the caller runs TLS with the RDP server now.
    pub fn wants_tls(&self) -> bool {
        self.state == RdpState::Tls
    }

    /// The protocol the RDP server selected (after its confirm).
    pub fn selected_protocol(&self) -> u32 {
        self.selected
    }

    /// Input PDUs dropped because of view-only.
    pub fn dropped_inputs(&self) -> u64 {
        self.dropped
    }

    /// Whether the bridge set `INFO_AUTOLOGON` in the Client Info PDU.
    pub fn autologon_set(&self) -> bool {
        self.autologon_set
    }

    /// The RDCleanPath response a replaying client gets (the live one with the
    /// selected protocol set to TLS), once TLS is up.
    pub fn replay_response(&self) -> &[u8] {
        &self.replay_response
    }

    /// Drains what must be written to the RDP server now.
    pub fn take_to_server(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.to_server)
    }

    /// Drains what must be sent to the browser now.
    pub fn take_to_browser(&mut self) -> ToBrowser {
        let record_from = std::mem::take(&mut self.unrecorded);
        ToBrowser {
            bytes: std::mem::take(&mut self.to_browser),
            record_from,
        }
    }

    fn fail(&mut self, e: RdpError) -> RdpError {
        self.state = RdpState::Failed;
        self.from_browser = Vec::new();
        self.from_server = Vec::new();
        e
    }

    /// Bytes the browser sent (the payloads of its binary WebSocket messages).
    pub fn from_browser(&mut self, data: &[u8]) -> Result<(), RdpError> {
        let r = match self.state {
            RdpState::AwaitRequest => self.request_bytes(data),
            RdpState::Relay => self.relay_c2s(data),
            RdpState::Failed => return Err(RdpError::Finished),
            // The client waits for the response before it sends anything more.
            _ if data.is_empty() => Ok(()),
            _ => Err(RdpError::OutOfTurn("browser")),
        };
        r.map_err(|e| self.fail(e))
    }

    /// Bytes read from the RDP server (below TLS during the confirm, above it
    /// in the relay).
    pub fn from_server(&mut self, data: &[u8]) -> Result<(), RdpError> {
        let r = match self.state {
            RdpState::AwaitConfirm => self.confirm_bytes(data),
            RdpState::Relay => {
                if !self.recording {
                    self.unrecorded = self.to_browser.len() + data.len();
                }
                self.to_browser.extend_from_slice(data);
                Ok(())
            }
            RdpState::Failed => return Err(RdpError::Finished),
            _ if data.is_empty() => Ok(()),
            _ => Err(RdpError::OutOfTurn(SERVER)),
        };
        r.map_err(|e| self.fail(e))
    }

    fn request_bytes(&mut self, data: &[u8]) -> Result<(), RdpError> {
        self.from_browser.extend_from_slice(data);
        let total = match RDCleanPathPdu::detect(&self.from_browser) {
            DetectionResult::Detected { total_length, .. } => total_length,
            DetectionResult::NotEnoughBytes => {
                if self.from_browser.len() > MAX_REQUEST {
                    return Err(RdpError::RequestTooLong { limit: MAX_REQUEST });
                }
                return Ok(());
            }
            DetectionResult::Failed => return Err(RdpError::NotRdCleanPath),
        };
        if total > MAX_REQUEST {
            return Err(RdpError::RequestTooLong { limit: MAX_REQUEST });
        }
        if self.from_browser.len() < total {
            return Ok(());
        }
        if self.from_browser.len() > total {
            // The client waits for the response: nothing may follow the request.
            return Err(RdpError::OutOfTurn("browser"));
        }
        let pdu = RDCleanPathPdu::from_der(&self.from_browser)
            .map_err(|e| RdpError::BadRequest(e.to_string()))?;
        self.from_browser = Vec::new();
        let msg = pdu
            .into_message()
            .map_err(|e| RdpError::BadRequest(e.to_string()))?;
        let RDCleanPathMessage::Request {
            destination,
            proxy_auth,
            preconnection_blob,
            x224_connection_request,
            ..
        } = msg
        else {
            return Err(match msg {
                RDCleanPathMessage::VmConnectRequest { .. } => RdpError::Unsupported("VMConnect"),
                _ => RdpError::BadRequest("not a request".into()),
            });
        };
        if preconnection_blob.is_some() {
            return Err(RdpError::Unsupported("a preconnection blob"));
        }
        let cr = x224_connection_request.as_bytes().to_vec();
        let requested_protocols = parse_connection_request(&cr)?;
        self.connection_request = cr;
        self.request = Some(RdpRequest {
            proxy_auth,
            destination,
            requested_protocols,
        });
        self.state = RdpState::Requested;
        Ok(())
    }

    /// The caller connected to the RDP server (after checking the request):
    /// the client's X.224 Connection Request goes out.
    pub fn connected(&mut self) -> Result<(), RdpError> {
        if self.state != RdpState::Requested {
            return Err(self.fail(RdpError::OutOfTurn("gateway")));
        }
        if self.injecting
            && let Err(e) = inject::request_tls_only(&mut self.connection_request)
        {
            return Err(self.fail(e));
        }
        self.to_server
            .extend_from_slice(&std::mem::take(&mut self.connection_request));
        self.state = RdpState::AwaitConfirm;
        Ok(())
    }

    fn confirm_bytes(&mut self, data: &[u8]) -> Result<(), RdpError> {
        self.from_server.extend_from_slice(data);
        let b = &self.from_server;
        if b.len() < 4 {
            return Ok(());
        }
        if b[0] != 3 {
            return Err(RdpError::BadConfirm);
        }
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        if len > MAX_CONFIRM {
            return Err(RdpError::ConfirmTooLong { limit: MAX_CONFIRM });
        }
        if len < 11 {
            return Err(RdpError::BadConfirm);
        }
        if b.len() < len {
            return Ok(());
        }
        if b.len() > len {
            // The server waits for TLS: nothing may follow its confirm.
            return Err(RdpError::OutOfTurn(SERVER));
        }
        let cc = std::mem::take(&mut self.from_server);
        match parse_confirm(&cc)? {
            Confirm::Selected(p) if self.injecting && p != PROTOCOL_SSL => {
                // Only TLS was offered: a server choosing NLA does not conform.
                Err(RdpError::NlaRequired)
            }
            Confirm::Selected(p) => {
                self.selected = p;
                self.confirm = cc;
                self.state = RdpState::Tls;
                Ok(())
            }
            Confirm::Failure(code) => {
                // The client reads the failure from the server's own confirm.
                if let Ok(pdu) = RDCleanPathPdu::new_negotiation_error(cc).and_then(|p| p.to_der())
                {
                    self.to_browser.extend_from_slice(&pdu);
                    self.unrecorded = self.to_browser.len();
                }
                Err(match code {
                    HYBRID_REQUIRED_BY_SERVER if self.injecting => RdpError::NlaRequired,
                    _ => RdpError::NegotiationFailed(code),
                })
            }
        }
    }

    /// TLS with the RDP server is up: the browser gets the response with the
    /// server's certificate chain (DER, leaf first) and address.
    pub fn tls_established(
        &mut self,
        cert_chain: Vec<Vec<u8>>,
        server_addr: String,
    ) -> Result<(), RdpError> {
        if self.state != RdpState::Tls {
            return Err(self.fail(RdpError::OutOfTurn("gateway")));
        }
        let live = RDCleanPathPdu::new_response(
            server_addr.clone(),
            self.confirm.clone(),
            cert_chain.clone(),
        )
        .and_then(|p| p.to_der())
        .map_err(|e| self.fail(RdpError::BadRequest(e.to_string())))?;
        let mut replay_cc = self.confirm.clone();
        if self.selected != PROTOCOL_SSL {
            replay_cc[15..19].copy_from_slice(&PROTOCOL_SSL.to_le_bytes());
        }
        self.replay_response = RDCleanPathPdu::new_response(server_addr, replay_cc, cert_chain)
            .and_then(|p| p.to_der())
            .unwrap_or_default();
        self.to_browser.extend_from_slice(&live);
        self.unrecorded = self.to_browser.len();
        self.c2s = if self.selected == PROTOCOL_SSL {
            C2s::Rdp
        } else {
            C2s::Credssp
        };
        self.recording = self.c2s == C2s::Rdp;
        self.state = RdpState::Relay;
        Ok(())
    }

    fn relay_c2s(&mut self, data: &[u8]) -> Result<(), RdpError> {
        self.from_browser.extend_from_slice(data);
        let mut at = 0;
        let r = loop {
            match self.next_pdu(at) {
                Ok(Some(len)) => {
                    let end = at + len;
                    if let Err(e) = self.handle_pdu(at, end) {
                        break Err(e);
                    }
                    at = end;
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.from_browser.drain(..at);
        r
    }

    /// The length of the PDU at `at` in `from_browser`, once it is all there.
    fn next_pdu(&mut self, at: usize) -> Result<Option<usize>, RdpError> {
        let b = &self.from_browser[at..];
        let Some(&first) = b.first() else {
            return Ok(None);
        };
        if self.c2s == C2s::Credssp && first == 3 {
            // The first TPKT after CredSSP (the MCS Connect Initial): from
            // here on the server's answers are recorded.
            self.c2s = C2s::Rdp;
            self.recording = true;
        }
        let len = match self.c2s {
            C2s::Credssp => {
                if first != 0x30 {
                    return Err(RdpError::BadClientPdu);
                }
                let Some(&l0) = b.get(1) else {
                    return Ok(None);
                };
                let (head, body) = match l0 {
                    0..=0x7F => (2, usize::from(l0)),
                    0x81..=0x83 => {
                        let n = usize::from(l0 & 0x7F);
                        let Some(bytes) = b.get(2..2 + n) else {
                            return Ok(None);
                        };
                        (
                            2 + n,
                            bytes.iter().fold(0usize, |a, &x| a << 8 | usize::from(x)),
                        )
                    }
                    _ => return Err(RdpError::BadClientPdu),
                };
                let len = head + body;
                if len > MAX_CREDSSP {
                    return Err(RdpError::ClientPduTooLong {
                        len,
                        limit: MAX_CREDSSP,
                    });
                }
                len
            }
            C2s::Rdp if first == 3 => {
                let Some(l) = b.get(2..4) else {
                    return Ok(None);
                };
                let len = usize::from(u16::from_be_bytes([l[0], l[1]]));
                if len < 7 {
                    return Err(RdpError::BadClientPdu);
                }
                len
            }
            C2s::Rdp if first & 0x3 == 0 => {
                // Fast-path: the length is one byte, or two when the first has
                // its top bit set (MS-RDPBCGR 2.2.8.1.2).
                let Some(&l0) = b.get(1) else {
                    return Ok(None);
                };
                let len = if l0 & 0x80 == 0 {
                    usize::from(l0)
                } else {
                    let Some(&l1) = b.get(2) else {
                        return Ok(None);
                    };
                    usize::from(l0 & 0x7F) << 8 | usize::from(l1)
                };
                if len < 2 {
                    return Err(RdpError::BadClientPdu);
                }
                len
            }
            C2s::Rdp => return Err(RdpError::BadClientPdu),
        };
        Ok((b.len() >= len).then_some(len))
    }

    /// Passes, changes or drops one whole client PDU.
    fn handle_pdu(&mut self, start: usize, end: usize) -> Result<(), RdpError> {
        let pdu = &mut self.from_browser[start..end];
        let pass = match self.c2s {
            C2s::Credssp => true,
            C2s::Rdp if pdu[0] == 3 => {
                match mcs_send_data(pdu) {
                    Some(data)
                        if !self.info_seen
                            && self.injecting
                            && inject::is_client_info(pdu, data.offset) =>
                    {
                        self.info_seen = true;
                        self.io_channel = Some(data.channel);
                        let c = self.credentials.take().ok_or(RdpError::Finished)?;
                        let mut rebuilt = inject::rewrite_client_info(pdu, data.offset, &c)?;
                        self.to_server.extend_from_slice(&rebuilt);
                        zeroize::Zeroize::zeroize(&mut rebuilt);
                        self.autologon_set = true;
                        return Ok(());
                    }
                    Some(data) => {
                        if !self.info_seen
                            && let Some(set) = client_info(pdu, data.offset)
                        {
                            self.info_seen = true;
                            self.io_channel = Some(data.channel);
                            self.autologon_set |= set;
                            true
                        } else if self.config.view_only
                            && self.io_channel.is_some_and(|io| io != data.channel)
                        {
                            // Virtual channel data (clipboard, drives…).
                            false
                        } else {
                            !(self.config.view_only && is_slow_path_input(&pdu[data.offset..]))
                        }
                    }
                    None => true,
                }
            }
            // Fast-path PDUs from the client are input only.
            C2s::Rdp => !self.config.view_only,
        };
        if pass {
            self.to_server
                .extend_from_slice(&self.from_browser[start..end]);
        } else {
            self.dropped += 1;
        }
        Ok(())
    }
}

/// Checks an X.224 Connection Request and answers the protocols it offers
/// (0, standard RDP security, when it has no negotiation request).
fn parse_connection_request(cr: &[u8]) -> Result<u32, RdpError> {
    if cr.len() < 11 || cr.len() > MAX_CONFIRM || cr[0] != 3 {
        return Err(RdpError::BadConnectionRequest);
    }
    let len = usize::from(u16::from_be_bytes([cr[2], cr[3]]));
    if len != cr.len() || usize::from(cr[4]) != len - 5 || cr[5] & 0xF0 != 0xE0 {
        return Err(RdpError::BadConnectionRequest);
    }
    // RDP_NEG_REQ, when present, is the last 8 bytes: type 1, flags, length 8.
    let neg = &cr[len - 8..];
    if len >= 19 && neg[0] == 1 && neg[2] == 8 && neg[3] == 0 {
        return Ok(u32::from_le_bytes([neg[4], neg[5], neg[6], neg[7]]));
    }
    Ok(PROTOCOL_RDP)
}

enum Confirm {
    Selected(u32),
    Failure(u32),
}

/// Reads an X.224 Connection Confirm (whole, as long as its TPKT says).
fn parse_confirm(cc: &[u8]) -> Result<Confirm, RdpError> {
    let len = cc.len();
    if len < 11 || usize::from(cc[4]) != len - 5 || cc[5] & 0xF0 != 0xD0 {
        return Err(RdpError::BadConfirm);
    }
    if len < 19 {
        // No negotiation response: standard RDP security.
        return Err(RdpError::StandardSecurity);
    }
    let value = u32::from_le_bytes([cc[15], cc[16], cc[17], cc[18]]);
    if cc[13] != 8 || cc[14] != 0 {
        return Err(RdpError::BadConfirm);
    }
    match cc[11] {
        2 => match value {
            PROTOCOL_RDP => Err(RdpError::StandardSecurity),
            PROTOCOL_SSL | PROTOCOL_HYBRID | PROTOCOL_HYBRID_EX => Ok(Confirm::Selected(value)),
            p => Err(RdpError::UnsupportedProtocol(p)),
        },
        3 => Ok(Confirm::Failure(value)),
        _ => Err(RdpError::BadConfirm),
    }
}

/// Where an MCS Send Data Request's user data starts, and its channel.
struct SendData {
    channel: u16,
    offset: usize,
}

/// The MCS Send Data Request in a TPKT (`03 00 LL LL | 02 F0 80 | 64 …`).
fn mcs_send_data(pdu: &[u8]) -> Option<SendData> {
    // TPKT(4), X.224 Data TPDU (LI 2, code F0, EOT 80).
    if pdu.get(4..7)? != [2, 0xF0, 0x80] || *pdu.get(7)? != MCS_SEND_DATA_REQUEST {
        return None;
    }
    // initiator(2), channelId(2), dataPriority/segmentation(1), PER length.
    let channel = u16::from_be_bytes([*pdu.get(10)?, *pdu.get(11)?]);
    let l0 = *pdu.get(13)?;
    let offset = if l0 & 0x80 == 0 { 14 } else { 15 };
    (pdu.len() >= offset).then_some(SendData { channel, offset })
}

/// When `pdu` is a Client Info PDU (the user data at `offset` starts with a
/// basic security header flagged SEC_INFO_PKT): sets INFO_AUTOLOGON when it
/// carries a password and answers whether it did.
fn client_info(pdu: &mut [u8], offset: usize) -> Option<bool> {
    let sec = u16::from_le_bytes([*pdu.get(offset)?, *pdu.get(offset + 1)?]);
    if sec & SEC_INFO_PKT == 0 {
        return None;
    }
    if sec & SEC_ENCRYPT != 0 {
        return Some(false);
    }
    // Security header (4), CodePage (4), flags (4), cbDomain, cbUserName, cbPassword (u16 each).
    let flags_at = offset + 8;
    let f = pdu.get(flags_at..flags_at + 4)?;
    let flags = u32::from_le_bytes([f[0], f[1], f[2], f[3]]);
    let p = pdu.get(flags_at + 8..flags_at + 10)?;
    let cb_password = u16::from_le_bytes([p[0], p[1]]);
    if cb_password == 0 || flags & INFO_AUTOLOGON != 0 {
        return Some(false);
    }
    pdu[flags_at..flags_at + 4].copy_from_slice(&(flags | INFO_AUTOLOGON).to_le_bytes());
    Some(true)
}

/// Whether MCS user data (without a security header, as with TLS) is a
/// slow-path input PDU: Share Control Header (totalLength, pduType,
/// pduSource), then Share Data Header (shareId, pad, streamId,
/// uncompressedLength, pduType2).
fn is_slow_path_input(data: &[u8]) -> bool {
    let (Some(t), Some(&t2)) = (data.get(2..4), data.get(14)) else {
        return false;
    };
    u16::from_le_bytes([t[0], t[1]]) & 0xF == PDUTYPE_DATAPDU && t2 == PDUTYPE2_INPUT
}

#[cfg(test)]
mod tests;
